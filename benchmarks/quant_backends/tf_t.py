import sys, os, copy, io, traceback, tempfile, warnings
warnings.filterwarnings('ignore')
import torch, transformers
from transformers import LlamaConfig, LlamaForCausalLM, AutoModelForCausalLM
which = sys.argv[1]
folder = '/tmp/quant/tiny_llama'
if not os.path.exists(folder + '/config.json'):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, vocab_size=1000)
    LlamaForCausalLM(cfg).save_pretrained(folder)
ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(1))
def qc():
    if which == 'bnb8':
        from transformers import BitsAndBytesConfig; return BitsAndBytesConfig(load_in_8bit=True)
    if which == 'bnb4':
        from transformers import BitsAndBytesConfig; return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_compute_dtype=torch.float32)
    if which == 'ao8':
        from transformers import TorchAoConfig; from torchao.quantization import Int8WeightOnlyConfig; return TorchAoConfig(Int8WeightOnlyConfig())
    if which == 'ao4':
        from transformers import TorchAoConfig; from torchao.quantization import Int4WeightOnlyConfig; return TorchAoConfig(Int4WeightOnlyConfig(group_size=64))
    if which == 'aox4':
        from transformers import TorchAoConfig; from torchao.quantization import IntxWeightOnlyConfig; from torchao.quantization.granularity import PerGroup
        return TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(64)))
    if which in ('quanto8','quanto4'):
        from transformers import QuantoConfig; return QuantoConfig(weights='int8' if which=='quanto8' else 'int4')
    if which in ('hqq8','hqq4'):
        from transformers import HqqConfig; return HqqConfig(nbits=8 if which=='hqq8' else 4, group_size=64)
print('#####', which, 'transformers', transformers.__version__)
try:
    m = AutoModelForCausalLM.from_pretrained(folder, quantization_config=qc(), dtype=torch.float32, device_map='cpu')
except Exception as e:
    print('  FROM_PRETRAINED FAIL', type(e).__name__, str(e)[:500]); 
    try:
        m = AutoModelForCausalLM.from_pretrained(folder, quantization_config=qc(), dtype=torch.float32)
        print('  (ok without device_map)')
    except Exception as e2:
        print('  FROM_PRETRAINED (no device_map) FAIL', type(e2).__name__, str(e2)[:500]); sys.exit()
if os.environ.get('BNB_FIX'):
    import bitsandbytes as bnb
    for mod in m.modules():
        if isinstance(mod, bnb.nn.Linear4bit): mod.support_avx512bf16_for_cpu = False
    print('  applied support_avx512bf16_for_cpu=False')
types = {}
for n, mod in m.named_modules():
    if n.endswith(('q_proj','k_proj','down_proj')) or n=='lm_head':
        w = getattr(mod, 'weight', None)
        types.setdefault(type(mod).__module__+'.'+type(mod).__name__, []).append(n)
        if n in ('model.layers.0.self_attn.q_proj','model.layers.0.self_attn.k_proj','lm_head'):
            print(f'  {n}: {type(mod).__name__} in={getattr(mod,"in_features",None)} out={getattr(mod,"out_features",None)} weight={type(w).__name__} shape={tuple(w.shape) if w is not None else None} dtype={getattr(w,"dtype",None)} isinstance(nn.Linear)={isinstance(mod, torch.nn.Linear)}')
print('  module types:', {k: len(v) for k,v in types.items()})
with torch.no_grad():
    lr = ref(ids).logits; lq = m(ids).logits
print(f'  logits rel err max {((lq.float()-lr).abs().max()/lr.abs().max()).item():.3e}')
emb = ref.get_input_embeddings()(ids).detach()
e1 = emb.clone().requires_grad_(True); ref(inputs_embeds=e1).logits.float().pow(2).mean().backward()
e2 = emb.clone().requires_grad_(True)
try:
    m(inputs_embeds=e2).logits.float().pow(2).mean().backward()
    print(f'  grad to inputs_embeds: rel err max {((e2.grad-e1.grad).abs().max()/e1.grad.abs().max()).item():.3e}')
    g = [n for n,p in m.named_parameters() if p.grad is not None]
    print('  params that got grads (should be none if frozen):', len(g), g[:3])
except Exception as e: print('  BACKWARD FAIL', type(e).__name__, str(e)[:300])
with torch.no_grad(): print('  deterministic:', torch.equal(m(ids).logits, m(ids).logits))
try:
    c = copy.deepcopy(m)
    with torch.no_grad(): print('  deepcopy model ok, equal', torch.equal(c(ids).logits, m(ids).logits))
except Exception as e: print('  DEEPCOPY model FAIL', type(e).__name__, str(e)[:200])
try:
    from peft import LoraConfig, get_peft_model
    pm = get_peft_model(m, LoraConfig(r=4, target_modules=['q_proj','v_proj','down_proj'], lora_dropout=0.0))
    lt = type(pm.base_model.model.model.layers[0].self_attn.q_proj).__name__
    pm.train(); out = pm(input_ids=ids, labels=ids); out.loss.backward()
    ng = sum(1 for n,p in pm.named_parameters() if p.requires_grad and p.grad is not None)
    nt = sum(1 for n,p in pm.named_parameters() if p.requires_grad)
    print(f'  peft LoRA: layer type {lt}; trainable {nt}, with grad {ng}, loss {out.loss.item():.3f}')
except Exception as e: print('  PEFT FAIL', type(e).__name__, str(e)[:300])
