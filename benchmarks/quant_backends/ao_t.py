import sys; sys.path.insert(0,'/tmp/quant')
from common import *
import torchao, time
from torchao.quantization import quantize_, Int8WeightOnlyConfig, Int4WeightOnlyConfig, IntxWeightOnlyConfig, to_nf4
from torchao.quantization.granularity import PerGroup, PerAxis
from torchao.quantization.quantize_.workflows.int4.int4_packing_format import Int4PackingFormat
print('torchao', torchao.__version__)
lin, x = ref()
def tm(m, n=5):
    x=xin
    xx = x.clone().requires_grad_(True); m(xx).sum().backward()
    t=time.perf_counter()
    for _ in range(n):
        xx = x.clone().requires_grad_(True); m(xx).sum().backward()
    return (time.perf_counter()-t)/n*1000
def deq_err(W, name):
    try:
        d = W.dequantize()
        print(f'  {name}.dequantize(): shape {tuple(d.shape)} {d.dtype} rel err max {((d.float()-lin.weight).abs().max()/lin.weight.abs().max()).item():.3e} rel fro {((d.float()-lin.weight).norm()/lin.weight.norm()).item():.3e}')
    except Exception as e: print('  DEQUANT FAIL', type(e).__name__, str(e)[:300])
cfgs = {
 'Int8WeightOnlyConfig()': Int8WeightOnlyConfig(),
 'Int4WeightOnlyConfig(group_size=64) plain': Int4WeightOnlyConfig(group_size=64),
 'Int4WeightOnlyConfig(64, tile_packed_to_4d)': Int4WeightOnlyConfig(group_size=64, int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D),
 'Int4WeightOnlyConfig(64, plain_int32)': Int4WeightOnlyConfig(group_size=64, int4_packing_format=Int4PackingFormat.PLAIN_INT32),
 'IntxWeightOnlyConfig(int4, PerGroup(64))': IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(64)),
 'IntxWeightOnlyConfig(int8, PerAxis(0))': IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
}
for name, cfg in cfgs.items():
  for dt in [torch.float32, torch.bfloat16]:
    m = copy.deepcopy(lin).to(dt); m.requires_grad_(False)
    print(f'=== {name} model dtype {dt}')
    try:
        quantize_(m, cfg)
    except Exception as e:
        print('  QUANTIZE FAIL', type(e).__name__, str(e)[:400]); continue
    W = m.weight
    print('  weight type', type(W).__name__, 'inner', type(W.data).__name__ if hasattr(W,'data') else '', 'shape', tuple(W.shape), W.dtype, 'module', type(m).__name__, m.in_features, m.out_features)
    xin = x.to(dt)
    lin_dt = copy.deepcopy(lin).to(dt)
    check(name, m, lin, x.to(dt))
    print('  bytes (params+buffers, unique storages)', nbytes(m), 'vs fp32', nbytes(lin))
    deq_err(W, 'weight')
    try: print('  fwd+bwd ms', tm(m))
    except Exception as e: print('  tm fail', e)
