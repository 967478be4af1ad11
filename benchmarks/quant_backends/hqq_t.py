import sys; sys.path.insert(0,'/tmp/quant')
from common import *
import time
import hqq
from hqq.core.quantize import HQQLinear, BaseQuantizeConfig, HQQBackend
print('hqq', getattr(hqq,'__version__','?'))
lin, x = ref()
for nbits in [8, 4]:
  for dt in [torch.float32, torch.bfloat16]:
    print(f'=== hqq nbits={nbits} group_size=64 compute_dtype={dt}')
    cfg = BaseQuantizeConfig(nbits=nbits, group_size=64, axis=1)
    try:
        q = HQQLinear(copy.deepcopy(lin), quant_config=cfg, compute_dtype=dt, device='cpu', del_orig=True)
    except Exception as e: traceback.print_exc(); continue
    print('  module', type(q).__name__, 'in/out', getattr(q,'in_features',None), getattr(q,'out_features',None), 'W_q', tuple(q.W_q.shape), q.W_q.dtype, 'meta keys', {k:(tuple(v.shape),str(v.dtype)) if torch.is_tensor(v) else v for k,v in q.meta.items()})
    print('  has .weight', hasattr(q,'weight'), type(getattr(q,'weight',None)).__name__)
    sd2 = check(f'hqq{nbits}', q, lin, x.to(dt))
    tot = q.W_q.nbytes + sum(v.nbytes for v in q.meta.values() if torch.is_tensor(v))
    print('  W_q+meta bytes', tot, ' (bias', q.bias.nbytes if q.bias is not None else 0, ') vs fp32 weight', lin.weight.nbytes)
    d = q.dequantize()
    print('  dequantize', tuple(d.shape), d.dtype, 'rel err max', ((d.float()-lin.weight).abs().max()/lin.weight.abs().max()).item(), 'rel fro', ((d.float()-lin.weight).norm()/lin.weight.norm()).item())
    t=time.perf_counter()
    for _ in range(5):
        xx = x.to(dt).clone().requires_grad_(True); q(xx).sum().backward()
    print('  fwd+bwd ms', (time.perf_counter()-t)/5*1000)
    try:
        q2 = HQQLinear(None, quant_config=cfg, compute_dtype=dt, device='cpu', initialize=False)
        q2.load_state_dict(q.state_dict())
        with torch.no_grad(): print('  reload into HQQLinear(None, initialize=False) equal', torch.equal(q2(x.to(dt)), q(x.to(dt))))
    except Exception as e: traceback.print_exc()
