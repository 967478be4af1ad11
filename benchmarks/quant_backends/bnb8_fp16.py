import sys; sys.path.insert(0,'/tmp/quant')
from common import *
import bitsandbytes as bnb, warnings
lin, x = ref()
for thr in [0.0, 6.0]:
    m = bnb.nn.Linear8bitLt(576,1536,has_fp16_weights=False,threshold=thr); m.load_state_dict(lin.state_dict()); m=m.to('cpu'); m.requires_grad_(False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        with torch.no_grad(): y = m(x*1e5); yr = lin(x*1e5)
    print('thr', thr, 'warnings:', [str(i.message)[:90] for i in w][:2], '| x*1e5: finite', torch.isfinite(y).all().item(), 'rel err', ((y-yr).abs().max()/yr.abs().max()).item())
    xs = torch.randn(4,8,576)*1e-6
    with torch.no_grad(): y = m(xs); yr = lin.weight @ xs[...,None]
    print('   tiny inputs 1e-6 (no bias): rel err', ((y-m.bias-yr[...,0]).abs().max()/yr.abs().max()).item())
from torchao.quantization import quantize_, Int8WeightOnlyConfig
a = copy.deepcopy(lin).requires_grad_(False); quantize_(a, Int8WeightOnlyConfig())
with torch.no_grad(): y=a(x*1e5); yr=lin(x*1e5)
print('torchao int8 x*1e5 finite', torch.isfinite(y).all().item(), 'rel err', ((y-yr).abs().max()/yr.abs().max()).item())
