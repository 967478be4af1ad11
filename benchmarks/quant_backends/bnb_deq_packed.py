import sys; sys.path.insert(0,'/tmp/quant')
from common import *
import bitsandbytes as bnb
lin, x = ref()
q4 = bnb.nn.Linear4bit(576,1536,compute_dtype=torch.float32,quant_type='nf4'); q4.load_state_dict(lin.state_dict()); q4=q4.to('cpu'); q4.eval()
d0 = bnb.functional.dequantize_4bit(q4.weight.data, q4.weight.quant_state)
with torch.no_grad(): q4(x)
try:
    d1 = bnb.functional.dequantize_4bit(q4.weight.data, q4.weight.quant_state); print('dequant after cpu packing: shape', tuple(d1.shape), 'equal to before', torch.equal(d0, d1) if d1.shape==d0.shape else False)
except Exception as e: print('dequant after cpu packing FAIL', type(e).__name__, str(e)[:200])
