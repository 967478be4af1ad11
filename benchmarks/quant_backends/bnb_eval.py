import sys; sys.path.insert(0,'/tmp/quant')
from common import *
import bitsandbytes as bnb
lin, x = ref()
def mk():
    q4 = bnb.nn.Linear4bit(576,1536,bias=True, compute_dtype=torch.float32, quant_type='nf4')
    q4.load_state_dict(lin.state_dict()); q4 = q4.to('cpu'); q4.requires_grad_(False); return q4
q4 = mk(); print('support_avx512bf16_for_cpu =', q4.support_avx512bf16_for_cpu)
with torch.no_grad(): y_train = q4(x)
q4.eval()
with torch.no_grad(): y_eval = q4(x)
print('after eval fwd: packing_format_for_cpu =', getattr(q4.weight.quant_state,'packing_format_for_cpu',False), 'weight shape', tuple(q4.weight.shape), '| eval vs train out max diff rel', ((y_eval-y_train).abs().max()/y_train.abs().max()).item())
q4.train()
try:
    xx = x.clone().requires_grad_(True); y = q4(xx)
    print('train after eval: y.requires_grad =', y.requires_grad)
except Exception as e: print('  train fwd after eval (bias=True) ERR:', type(e).__name__, str(e)[:200])
q4.bias = None
# bigger graph: residual makes it silent
xx = x.clone().requires_grad_(True); yb=q4(xx); print('  bias=None, y.requires_grad', yb.requires_grad); (yb.sum() + xx.sum()).backward()
lin_g = torch.ones(4,8,576) + torch.ones(4,8,1536) @ lin.weight
print('  bias=None: x.grad', xx.grad is not None)
print('  with residual: x.grad rel err vs true', ((xx.grad-lin_g).abs().max()/lin_g.abs().max()).item())
# workaround
q4 = mk(); q4.support_avx512bf16_for_cpu = False; q4.eval()
with torch.no_grad(): q4(x)
xx = x.clone().requires_grad_(True); y=q4(xx); y.sum().backward()
print('workaround support_avx512bf16_for_cpu=False: packed?', getattr(q4.weight.quant_state,'packing_format_for_cpu',False), 'x.grad ok', xx.grad is not None)
# undo conversion
from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse
q4 = mk(); q4.eval()
with torch.no_grad(): q4(x)
q4.weight.data, q4.weight.quant_state = _convert_weight_packed_for_cpu_inverse(q4.weight.data, q4.weight.quant_state)
q4.train(); xx = x.clone().requires_grad_(True); y=q4(xx); print('after inverse conversion: y.requires_grad', y.requires_grad)
import subprocess; print(subprocess.run("grep -o -m1 'avx512_bf16' /proc/cpuinfo", shell=True, capture_output=True, text=True).stdout)
