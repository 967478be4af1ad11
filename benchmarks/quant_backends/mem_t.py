import sys, gc, os, warnings; warnings.filterwarnings('ignore')
import torch, ctypes
libc=ctypes.CDLL('libc.so.6')
sys.path.insert(0,'/tmp/quant')
from common import nbytes
which = sys.argv[1]
def rss(): return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
N, IN, OUT = 8, 1024, 4096
def q(lin):
    if which == 'fp32': return lin
    if which == 'bf16': return lin.to(torch.bfloat16)
    if which == 'bnb8':
        import bitsandbytes as bnb
        m = bnb.nn.Linear8bitLt(IN, OUT, bias=False, has_fp16_weights=False, threshold=0.0); m.load_state_dict(lin.state_dict()); return m.to('cpu')
    if which == 'bnb4':
        import bitsandbytes as bnb
        m = bnb.nn.Linear4bit(IN, OUT, bias=False, compute_dtype=torch.float32, quant_type='nf4'); m.load_state_dict(lin.state_dict()); return m.to('cpu')
    if which == 'ao8':
        from torchao.quantization import quantize_, Int8WeightOnlyConfig; quantize_(lin, Int8WeightOnlyConfig()); return lin
    if which == 'aox4':
        from torchao.quantization import quantize_, IntxWeightOnlyConfig; from torchao.quantization.granularity import PerGroup
        quantize_(lin, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(64))); return lin
    if which == 'aonf4':
        from torchao.quantization import to_nf4
        lin.weight = torch.nn.Parameter(to_nf4(lin.weight.data), requires_grad=False); return lin
    if which in ('quanto8','quanto4'):
        from optimum.quanto import quantize, freeze, qint8, qint4
        s = torch.nn.Sequential(lin); quantize(s, weights=qint8 if which=='quanto8' else qint4); freeze(s); return s[0]
    if which in ('hqq8','hqq4'):
        from hqq.core.quantize import HQQLinear, BaseQuantizeConfig
        return HQQLinear(lin, BaseQuantizeConfig(nbits=8 if which=='hqq8' else 4, group_size=64), compute_dtype=torch.float32, device='cpu')
# import libs first
q(torch.nn.Linear(IN, OUT, bias=False).requires_grad_(False)); gc.collect()
libc.malloc_trim(0); r0 = rss(); layers = []
with torch.no_grad():
    for i in range(N):
        lin = torch.nn.Linear(IN, OUT, bias=False); lin.requires_grad_(False)
        layers.append(q(lin)); del lin; gc.collect(); libc.malloc_trim(0)
r1 = rss()
fp32 = N*IN*OUT*4
st = sum(nbytes(l) for l in layers) if not which.startswith('hqq') else sum(l.W_q.nbytes+l.meta['scale'].nbytes+l.meta['zero'].nbytes for l in layers)
if which=='bnb8': st = sum(l.weight.data.nbytes + l.weight.SCB.nbytes for l in layers)
if which=='bnb4': st = sum(l.weight.data.nbytes + l.weight.quant_state.absmax.nbytes + l.weight.quant_state.state2.absmax.nbytes for l in layers)
print(f'{which:8s} tensor storage {st/fp32*100:5.1f}% of fp32;  RSS delta {(r1-r0)/2**20:7.1f} MiB  = {(r1-r0)/fp32*100:5.1f}% of fp32 ({fp32/2**20:.0f} MiB)')
