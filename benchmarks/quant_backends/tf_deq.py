import warnings; warnings.filterwarnings('ignore')
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
m = AutoModelForCausalLM.from_pretrained('/tmp/quant/tiny_llama', quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_compute_dtype=torch.float32), dtype=torch.float32, device_map='cpu')
ref = AutoModelForCausalLM.from_pretrained('/tmp/quant/tiny_llama', dtype=torch.float32)
try:
    d = m.dequantize(); w=d.model.layers[0].self_attn.q_proj.weight; r=ref.model.layers[0].self_attn.q_proj.weight
    print('model.dequantize():', type(d.model.layers[0].self_attn.q_proj).__name__, tuple(w.shape), w.dtype, 'rel fro', ((w-r).norm()/r.norm()).item())
except Exception as e: print('model.dequantize FAIL', type(e).__name__, str(e)[:300])
