import sys; sys.path.insert(0,'/tmp/quant')
from misc_t import *  # builds factories (prints its table too)
import time
X = torch.randn(4, 128, 576)
def tm(m, n=10):
    for _ in range(2):
        xx = X.clone().requires_grad_(True); m(xx).sum().backward()
    t=time.perf_counter()
    for _ in range(n):
        xx = X.clone().requires_grad_(True); m(xx).sum().backward()
    return (time.perf_counter()-t)/n*1000
res = {}
for rep in range(2):
  for name, f in [('fp32',lambda: copy.deepcopy(lin).requires_grad_(False)),('bnb8',bnb8),('bnb4',bnb4),('ao8',ao(Int8WeightOnlyConfig())),('aox4',ao(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(64)))),('aonf4',aonf4),('quanto8',qu(qint8)),('quanto4',qu(qint4)),('hqq8',hq(8,True)),('hqq4',hq(4,True))]:
    m = f(); m.requires_grad_(False); res.setdefault(name, []).append(tm(m))
print('train fwd+bwd ms, 512 tokens x Linear(576,1536), fp32, 1 thread (min of 2 reps):')
print('  '.join(f'{k}={min(v):.1f}' for k,v in res.items()))
