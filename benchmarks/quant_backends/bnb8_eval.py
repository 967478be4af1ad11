import sys; sys.path.insert(0,'/tmp/quant')
from common import *
import bitsandbytes as bnb, time
lin, x = ref()
with torch.no_grad(): yr = lin(x)
for thr in [0.0, 6.0]:
    m = bnb.nn.Linear8bitLt(576,1536,has_fp16_weights=False,threshold=thr); m.load_state_dict(lin.state_dict()); m=m.to('cpu'); m.requires_grad_(False)
    with torch.no_grad(): yt = m(x)
    m.eval()
    with torch.no_grad(): ye = m(x)
    xx = x.clone().requires_grad_(True); m(xx).sum().backward(); ge = xx.grad
    m.train(); xx = x.clone().requires_grad_(True); m(xx).sum().backward(); gt = xx.grad
    xr = x.clone().requires_grad_(True); lin(xr).sum().backward()
    t=time.perf_counter(); m.eval()
    with torch.no_grad():
        for _ in range(5): m(x)
    te=(time.perf_counter()-t)/5*1000; m.train(); t=time.perf_counter()
    with torch.no_grad():
        for _ in range(5): m(x)
    tt=(time.perf_counter()-t)/5*1000
    with torch.no_grad(): m.eval(); yb = m(x*1e5); m.train()
    print(f'thr={thr}: train-mode out err {((yt-yr).abs().max()/yr.abs().max()).item():.2e}, eval-mode out err {((ye-yr).abs().max()/yr.abs().max()).item():.2e}, train==eval {torch.equal(yt,ye)}; grad err eval {((ge-xr.grad).abs().max()/xr.grad.abs().max()).item():.2e} train {((gt-xr.grad).abs().max()/xr.grad.abs().max()).item():.2e}; fwd ms eval {te:.1f} train {tt:.1f}; eval x*1e5 finite {torch.isfinite(yb).all().item()}')
