import sys; sys.path.insert(0,'/tmp/quant')
from common import *
import bitsandbytes as bnb
print('bnb', bnb.__version__)
lin, x = ref()
fp32 = lin.weight.numel()*4
# int8
try:
    q8 = bnb.nn.Linear8bitLt(576, 1536, bias=True, has_fp16_weights=False, threshold=0.0)
    q8.load_state_dict(lin.state_dict())
    q8 = q8.to('cpu')
    print('int8 weight type', type(q8.weight).__name__, q8.weight.dtype, q8.weight.shape, 'CB' , getattr(q8.weight,'CB',None) is not None, 'SCB', getattr(q8.weight,'SCB',None))
    sd2 = check('bnb int8', q8, lin, x)
    print('  weight bytes', nbytes(q8), 'vs fp32 weight+bias', fp32+1536*4)
    # dequant
    w = q8.weight
    CB = w.CB if w.CB is not None else w.data
    deq = CB.float() * w.SCB.float().unsqueeze(1) / 127
    print('  dequant int8 rel err max', ((deq-lin.weight).abs().max()/lin.weight.abs().max()).item(), 'rel fro', ((deq-lin.weight).norm()/lin.weight.norm()).item())
    try:
        from bitsandbytes.functional import int8_vectorwise_dequant
        d2 = int8_vectorwise_dequant(CB, w.SCB); print('  int8_vectorwise_dequant equal manual:', torch.allclose(d2.float(),deq, atol=1e-6))
    except Exception as e: print('  int8_vectorwise_dequant fail', e)
    # load into fresh
    q8b = bnb.nn.Linear8bitLt(576,1536,bias=True,has_fp16_weights=False)
    try:
        q8b.load_state_dict(sd2); q8b=q8b.to('cpu')
        with torch.no_grad(): print('  reload equal:', torch.equal(q8b(x), q8(x)))
    except Exception as e: print('  RELOAD FAIL', type(e).__name__, str(e)[:300])
except Exception as e:
    traceback.print_exc()
# 4bit
for qt in ['nf4','fp4']:
  for cd in [torch.float32, torch.bfloat16]:
    try:
        q4 = bnb.nn.Linear4bit(576,1536,bias=True, compute_dtype=cd, quant_type=qt, quant_storage=torch.uint8)
        q4.load_state_dict(lin.state_dict()); q4 = q4.to('cpu')
        print(qt, cd, 'weight', type(q4.weight).__name__, q4.weight.dtype, q4.weight.shape, 'quant_state shape', q4.weight.quant_state.shape)
        sd2 = check(f'bnb {qt} compute={cd}', q4, lin, x)
        print('  weight bytes', nbytes(q4), '+quant_state absmax', q4.weight.quant_state.absmax.nbytes, 'vs fp32', fp32+1536*4)
        deq = bnb.functional.dequantize_4bit(q4.weight.data, q4.weight.quant_state)
        print('  dequantize_4bit', deq.shape, deq.dtype, 'rel err max', ((deq.float()-lin.weight).abs().max()/lin.weight.abs().max()).item(), 'rel fro', ((deq.float()-lin.weight).norm()/lin.weight.norm()).item())
        q4b = bnb.nn.Linear4bit(576,1536,bias=True, compute_dtype=cd, quant_type=qt)
        try:
            q4b.load_state_dict(sd2); 
            with torch.no_grad(): print('  reload equal:', torch.equal(q4b(x), q4(x)))
        except Exception as e: print('  RELOAD FAIL', type(e).__name__, str(e)[:400])
    except Exception as e:
        traceback.print_exc()
