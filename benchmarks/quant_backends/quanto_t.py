import sys; sys.path.insert(0,'/tmp/quant')
from common import *
import time
import optimum.quanto as oq
from optimum.quanto import quantize, freeze, qint8, qint4, requantize, quantization_map
print('quanto', getattr(oq,'__version__','?'))
lin, x = ref()
for wname, wt in [('qint8', qint8), ('qint4', qint4)]:
  for dt in [torch.float32, torch.bfloat16]:
    print(f'=== quanto {wname} dtype {dt}')
    m = torch.nn.Sequential(copy.deepcopy(lin).to(dt)); m.requires_grad_(False)
    try:
        quantize(m, weights=wt); freeze(m)
    except Exception as e: traceback.print_exc(); continue
    q = m[0]
    W = q.weight; print('  module', type(q).__name__, q.in_features, q.out_features, 'weight', type(W).__name__, tuple(W.shape), W.dtype)
    try: print('  qweight', type(q.qweight).__name__, 'inner', {n:(tuple(getattr(q.qweight,n).shape), str(getattr(q.qweight,n).dtype)) for n in q.qweight.__tensor_flatten__()[0]})
    except Exception as e: print('  qweight inspect fail', e)
    sd2 = check(f'quanto {wname}', q, lin, x.to(dt))
    print('  bytes', nbytes(q), 'vs fp32', nbytes(lin))
    try:
        d = q.qweight.dequantize()
        print('  dequantize', type(d).__name__, d.dtype, 'rel err max', ((d.float()-lin.weight).abs().max()/lin.weight.abs().max()).item(), 'rel fro', ((d.float()-lin.weight).norm()/lin.weight.norm()).item())
    except Exception as e: print('  DEQUANT FAIL', type(e).__name__, str(e)[:300])
    try:
        t=time.perf_counter()
        for _ in range(5):
            xx = x.to(dt).clone().requires_grad_(True); q(xx).sum().backward()
        print('  fwd+bwd ms', (time.perf_counter()-t)/5*1000)
    except Exception as e: print('  time fail', e)
    # reload via requantize
    try:
        qmap = quantization_map(m); sd = m.state_dict()
        fresh = torch.nn.Sequential(torch.nn.Linear(576,1536).to(dt))
        requantize(fresh, sd, qmap, device=torch.device('cpu'))
        with torch.no_grad(): print('  requantize reload equal', torch.equal(fresh(x.to(dt)), m(x.to(dt))), 'qmap', qmap)
        print('  sd keys', {k:(type(v).__name__, tuple(v.shape), str(v.dtype)) for k,v in sd.items()})
    except Exception as e: traceback.print_exc()
    try:
        m2 = torch.nn.Sequential(copy.deepcopy(lin).to(dt)); quantize(m2, weights=wt); freeze(m2)
        m2.load_state_dict(m.state_dict())
        with torch.no_grad(): print('  load into quantized equal', torch.equal(m2(x.to(dt)), m(x.to(dt))))
    except Exception as e: print('  load into quantized FAIL', type(e).__name__, str(e)[:300])
