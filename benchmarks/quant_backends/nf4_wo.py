import sys; sys.path.insert(0,'/tmp/quant')
from common import *
from torchao.quantization import to_nf4
lin, x = ref()
m = copy.deepcopy(lin).requires_grad_(False); m.weight = torch.nn.Parameter(to_nf4(m.weight.data), requires_grad=False)
buf=io.BytesIO(); torch.save(m.state_dict(), buf); buf.seek(0)
try: sd = torch.load(buf); print('NF4 torch.load weights_only=True ok')
except Exception as e: print('NF4 weights_only=True FAIL', type(e).__name__, str(e)[:250])
print('weight.to(float32) type', type(m.weight.to(torch.float32)).__name__, 'get_original_weight type', type(m.weight.get_original_weight()).__name__)
