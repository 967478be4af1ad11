import sys; sys.path.insert(0,'/tmp/quant')
from common import *
import time
from optimum.quanto import quantize, freeze, qint8, qint4
lin, x = ref()
for wname, wt in [('qint8', qint8), ('qint4', qint4)]:
    m = torch.nn.Sequential(copy.deepcopy(lin)); quantize(m, weights=wt); freeze(m); m.requires_grad_(False)
    q=m[0]
    xx = x.clone().requires_grad_(True); q(xx).sum().backward()
    print(wname, 'after requires_grad_(False): x.grad', xx.grad is not None, 'weight.grad', q.weight.grad, 'w.requires_grad', q.weight.requires_grad)
    t=time.perf_counter()
    for _ in range(5):
        xx = x.clone().requires_grad_(True); q(xx).sum().backward()
    print('  fwd+bwd ms (warm)', (time.perf_counter()-t)/5*1000)
    # torch.save whole module / pickle
    try:
        buf=io.BytesIO(); torch.save(m, buf); buf.seek(0); m3=torch.load(buf, weights_only=False)
        with torch.no_grad(): print('  torch.save(module) roundtrip equal', torch.equal(m3(x), m(x)))
    except Exception as e: print('  module pickle FAIL', type(e).__name__, str(e)[:200])
