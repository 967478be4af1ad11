import sys; sys.path.insert(0,'/tmp/quant')
from common import *
import bitsandbytes as bnb, time
lin, x = ref()
def tm(m, n=5):
    xx = x.clone().requires_grad_(True)
    m(xx).sum().backward()
    t=time.perf_counter()
    for _ in range(n):
        xx = x.clone().requires_grad_(True); m(xx).sum().backward()
    return (time.perf_counter()-t)/n*1000
print('fp32 fwd+bwd ms', tm(lin))
for thr in [0.0, 6.0]:
    q8 = bnb.nn.Linear8bitLt(576, 1536, bias=True, has_fp16_weights=False, threshold=thr)
    q8.load_state_dict(lin.state_dict()); q8 = q8.to('cpu'); q8.bias.requires_grad_(False)
    with torch.no_grad(): y=q8(x)
    print('thr',thr,'state.SCB', q8.state.SCB is not None, 'weight.SCB', q8.weight.SCB is not None, 'weight dtype', q8.weight.dtype)
    SCB = q8.weight.SCB if q8.weight.SCB is not None else q8.state.SCB
    deq = bnb.functional.int8_vectorwise_dequant(q8.weight.data, SCB)
    print('  int8 dequant', deq.dtype, 'rel err max', ((deq.float()-lin.weight).abs().max()/lin.weight.abs().max()).item(), 'rel fro', ((deq.float()-lin.weight).norm()/lin.weight.norm()).item())
    print('  weight-only bytes', q8.weight.data.nbytes + SCB.nbytes, 'vs fp32', lin.weight.nbytes)
    print('  fwd+bwd ms', tm(q8))
    # reload into fresh and into quantized
    sd = q8.state_dict()
    q8b = bnb.nn.Linear8bitLt(576,1536,bias=True,has_fp16_weights=False, threshold=thr)
    try:
        q8b.load_state_dict(sd); q8b=q8b.to('cpu')
        with torch.no_grad(): print('  reload (fresh, then .to cpu) equal:', torch.equal(q8b(x), y))
    except Exception as e: print('  RELOAD FAIL', type(e).__name__, str(e)[:300])
    q8c = bnb.nn.Linear8bitLt(576,1536,bias=True,has_fp16_weights=False, threshold=thr).to('cpu')
    try:
        q8c.load_state_dict(sd)
        with torch.no_grad(): print('  reload (quantized first) equal:', torch.equal(q8c(x), y))
    except Exception as e: print('  RELOAD2 FAIL', type(e).__name__, str(e)[:300])
for qt in ['nf4']:
    q4 = bnb.nn.Linear4bit(576,1536,bias=True, compute_dtype=torch.float32, quant_type=qt)
    q4.load_state_dict(lin.state_dict()); q4 = q4.to('cpu'); q4.bias.requires_grad_(False)
    with torch.no_grad(): y=q4(x)
    print('nf4 fwd+bwd ms', tm(q4))
    qs=q4.weight.quant_state
    print('  nf4 weight-only bytes', q4.weight.data.nbytes + qs.absmax.nbytes + (qs.state2.absmax.nbytes if qs.nested else 0), 'nested', qs.nested, 'blocksize', qs.blocksize)
    sd = q4.state_dict()
    # way 1: into quantized module
    q4c = bnb.nn.Linear4bit(576,1536,bias=True, compute_dtype=torch.float32, quant_type=qt)
    q4c.load_state_dict(lin.state_dict()); q4c=q4c.to('cpu')
    try:
        q4c.load_state_dict(sd)
        with torch.no_grad(): print('  reload into quantized: equal', torch.equal(q4c(x), y))
    except Exception as e: print('  RELOAD-into-quantized FAIL', type(e).__name__, str(e)[:300])
    # way 2: from_prequantized
    try:
        q4d = bnb.nn.Linear4bit(576,1536,bias=True, compute_dtype=torch.float32, quant_type=qt)
        qsd = {k[len('weight.'):]:v for k,v in sd.items() if k.startswith('weight.')}
        q4d.weight = bnb.nn.Params4bit.from_prequantized(data=sd['weight'], quantized_stats={k:v for k,v in sd.items() if k.startswith('weight.')}, requires_grad=False, device='cpu')
        q4d.bias = torch.nn.Parameter(sd['bias'], requires_grad=False)
        with torch.no_grad(): print('  from_prequantized equal', torch.equal(q4d(x), y))
    except Exception as e: traceback.print_exc()
    # no nested
    q4n = bnb.nn.Linear4bit(576,1536,bias=True, compute_dtype=torch.float32, quant_type=qt, compress_statistics=False)
    q4n.load_state_dict(lin.state_dict()); q4n=q4n.to('cpu')
    print('  nf4 compress_statistics=False bytes', q4n.weight.data.nbytes+q4n.weight.quant_state.absmax.nbytes, 'absmax dtype', q4n.weight.quant_state.absmax.dtype)
    # torch.compile-free; check contiguity/inference_mode
    with torch.inference_mode(): print('  inference_mode ok', q4(x).shape)
