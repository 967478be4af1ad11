import sys; sys.path.insert(0,'/tmp/quant')
from common import *
import torchao, time
from torchao.quantization import quantize_, Int8WeightOnlyConfig, IntxWeightOnlyConfig, to_nf4, NF4Tensor
from torchao.quantization.granularity import PerGroup
from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4
lin, x = ref()
for dt in [torch.float32, torch.bfloat16]:
    print('=== NF4 via to_nf4 on weight dtype', dt)
    m = copy.deepcopy(lin).to(dt); m.requires_grad_(False)
    try:
        m.weight = torch.nn.Parameter(to_nf4(m.weight.data, block_size=64, scaler_block_size=256), requires_grad=False)
    except Exception as e: print('  to_nf4 FAIL', type(e).__name__, str(e)[:300]); continue
    W=m.weight; print('  weight', type(W).__name__, tuple(W.shape), W.dtype)
    check('nf4 nn.Linear(F.linear)', m, lin, x.to(dt))
    print('  bytes', nbytes(m), 'inner:', {n: (tuple(getattr(W,n).shape), str(getattr(W,n).dtype), getattr(W,n).nbytes) for n in W.__tensor_flatten__()[0]})
    d = W.get_original_weight() if hasattr(W,'get_original_weight') else W.to(dt)
    print('  dequant get_original_weight', d.dtype, 'rel err max', ((d.float()-lin.weight).abs().max()/lin.weight.abs().max()).item(), 'rel fro', ((d.float()-lin.weight).norm()/lin.weight.norm()).item())
    # explicit linear_nf4
    xx = x.to(dt).clone().requires_grad_(True); y = linear_nf4(xx, W); y.sum().backward(); print('  linear_nf4 x.grad ok', xx.grad is not None)
    xx = x.to(dt).clone(); 
    t=time.perf_counter()
    for _ in range(5):
        xx = x.to(dt).clone().requires_grad_(True); m(xx).sum().backward()
    print('  fwd+bwd ms', (time.perf_counter()-t)/5*1000)
    # reload
    sd = m.state_dict()
    fresh = torch.nn.Linear(576,1536).to(dt)
    try:
        fresh.load_state_dict(sd, assign=True)
        with torch.no_grad(): print('  reload assign=True equal', torch.equal(fresh(x.to(dt)), m(x.to(dt))), type(fresh.weight).__name__)
    except Exception as e: print('  RELOAD FAIL', type(e).__name__, str(e)[:300])
    try:
        fresh = torch.nn.Linear(576,1536).to(dt); fresh.load_state_dict(sd)
        with torch.no_grad(): print('  reload (no assign) equal', torch.equal(fresh(x.to(dt)), m(x.to(dt))), type(fresh.weight).__name__)
    except Exception as e: print('  RELOAD no-assign FAIL', type(e).__name__, str(e)[:300])
print('=== reload int8 / intx ')
for name,cfg in [('int8',Int8WeightOnlyConfig()),('intx4',IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(64)))]:
    m = copy.deepcopy(lin); m.requires_grad_(False); quantize_(m,cfg)
    buf=io.BytesIO(); torch.save(m.state_dict(), buf); buf.seek(0)
    try: sd=torch.load(buf); print('  ',name,'torch.load weights_only=True ok')
    except Exception as e:
        print('  ',name,'torch.load weights_only=True FAIL', type(e).__name__, str(e)[:200]); buf.seek(0); sd=torch.load(buf, weights_only=False)
    for assign in [False, True]:
        fresh = torch.nn.Linear(576,1536)
        try:
            fresh.load_state_dict(sd, assign=assign)
            with torch.no_grad(): print('  ',name,'reload into plain Linear assign=',assign,'type',type(fresh.weight).__name__,'equal', torch.equal(fresh(x), m(x)))
        except Exception as e: print('  ',name,'reload FAIL assign=',assign, type(e).__name__, str(e)[:300])
    fresh = torch.nn.Linear(576,1536); fresh.requires_grad_(False); quantize_(fresh,cfg)
    try:
        fresh.load_state_dict(sd)
        with torch.no_grad(): print('  ',name,'reload into quantized Linear equal', torch.equal(fresh(x), m(x)))
    except Exception as e: print('  ',name,'reload into quantized FAIL', type(e).__name__, str(e)[:300])
    W=m.weight; print('  inner', {n: (tuple(getattr(W,n).shape), str(getattr(W,n).dtype)) for n in W.__tensor_flatten__()[0]})
    # safetensors?
    try:
        from safetensors.torch import save_file; save_file(m.state_dict(), '/tmp/quant/x.safetensors'); print('  safetensors save ok')
    except Exception as e: print('  safetensors save FAIL', type(e).__name__, str(e)[:200])
