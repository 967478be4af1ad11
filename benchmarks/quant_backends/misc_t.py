import sys; sys.path.insert(0,'/tmp/quant')
from common import *
import bitsandbytes as bnb
from torchao.quantization import quantize_, Int8WeightOnlyConfig, IntxWeightOnlyConfig, to_nf4
from torchao.quantization.granularity import PerGroup
from optimum.quanto import quantize, freeze, qint8, qint4
from hqq.core.quantize import HQQLinear, BaseQuantizeConfig
lin, x = ref()
def bnb8():
    m = bnb.nn.Linear8bitLt(576,1536,has_fp16_weights=False,threshold=0.0); m.load_state_dict(lin.state_dict()); return m.to('cpu')
def bnb4():
    m = bnb.nn.Linear4bit(576,1536,compute_dtype=torch.float32,quant_type='nf4'); m.load_state_dict(lin.state_dict()); return m.to('cpu')
def ao(cfg):
    def f():
        m = copy.deepcopy(lin).requires_grad_(False); quantize_(m, cfg); return m
    return f
def aonf4():
    m = copy.deepcopy(lin).requires_grad_(False); m.weight = torch.nn.Parameter(to_nf4(m.weight.data), requires_grad=False); return m
def qu(w):
    def f():
        s = torch.nn.Sequential(copy.deepcopy(lin)); quantize(s, weights=w); freeze(s); s.requires_grad_(False); return s[0]
    return f
def hq(n, nograd=False):
    def f():
        if nograd:
            with torch.no_grad(): return HQQLinear(copy.deepcopy(lin), BaseQuantizeConfig(nbits=n, group_size=64), compute_dtype=torch.float32, device='cpu')
        return HQQLinear(copy.deepcopy(lin), BaseQuantizeConfig(nbits=n, group_size=64), compute_dtype=torch.float32, device='cpu')
    return f
for name, f in [('bnb8',bnb8),('bnb4',bnb4),('ao8',ao(Int8WeightOnlyConfig())),('aox4',ao(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(64)))),('aonf4',aonf4),('quanto8',qu(qint8)),('quanto4',qu(qint4)),('hqq8',hq(8)),('hqq4',hq(4)),('hqq4 built under no_grad',hq(4,True))]:
    a, b = f(), f()
    with torch.no_grad(): same = torch.equal(a(x), b(x))
    # batch invariance: row 0 alone vs in batch
    with torch.no_grad(): bi = torch.equal(a(x)[:1], a(x[:1]))
    try:
        c = copy.deepcopy(a); 
        with torch.no_grad(): dc = torch.equal(c(x), a(x))
    except Exception as e: dc = f'FAIL {type(e).__name__}: {str(e)[:90]}'
    print(f'{name:26s} requantize-identical-out={same}  batch-invariant={bi}  deepcopy={dc}')
