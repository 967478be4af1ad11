#!/usr/bin/env bash
# The GPU check's one command on the lent machine (issue 38), from the repository root:
#
#   bash benchmarks/gpu/gpu_check.sh "$OUT"                  # device run tool: carry ["benchmarks/gpu/wheels"]
#   PYTHON=/path/to/python bash benchmarks/gpu/gpu_check.sh OUT --dry-run   # the same steps on a CPU machine
#
# 1. installs the carried wheels (benchmarks/gpu/wheels.sh downloads them) into /tmp/gpuenv, no venv, no index;
#    if the check's imports then fail, adds wheels/fallback/ and tries again;
# 2. PYTHONPATH=/tmp/gpuenv:$PWD, so the carried transformers / huggingface_hub / omegaconf shadow the device's
#    and adarank is imported from this working tree;
# 3. prints the device (nvidia-smi, also into OUT/nvidia-smi.txt);
# 4. runs benchmarks/gpu/gpu_check.py --out OUT under `timeout` (290 s, less what the install took, so that the
#    whole command stays under five minutes); its output also goes to OUT/gpu_check.log.
# Extra arguments go to gpu_check.py (--dry-run, --only SECTION ..., --budget S).
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu/gpu_check.sh OUT_DIR [gpu_check.py arguments]}
shift
cd "$(dirname "$0")/../.." || exit 2
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-python3}
TARGET=${GPUENV:-/tmp/gpuenv}
WHEELS=benchmarks/gpu/wheels
log() { echo "[gpu_check.sh ${SECONDS}s] $*"; }

probe() {
  PYTHONPATH="$TARGET:$PWD" "$PYTHON" - <<'PY'
import huggingface_hub, omegaconf, peft, accelerate, transformers
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast
import adarank.training.engine, adarank.checks, adarank.cli
import torch
from adarank.training.batches import only_scored_logits
# what the check does with them, on a tiny model on the CPU: PEFT LoRA and AdaLoRA, forward with the head on
# the scored positions, backward, AdaLoRA's allocation step
for config in (LoraConfig(r=2, target_modules=["q_proj"]), AdaLoraConfig(init_r=3, target_r=2, tinit=1, tfinal=1,
               deltaT=1, total_step=4, target_modules=["q_proj"])):
    model = get_peft_model(AutoModelForCausalLM.from_config(LlamaConfig(hidden_size=16, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, vocab_size=50)), config)
    ids = torch.randint(0, 50, (2, 6))
    batch = only_scored_logits(model.get_base_model(), {"input_ids": ids, "labels": ids})
    model(**batch).loss.backward()
    if isinstance(config, AdaLoraConfig):
        model.base_model.update_and_allocate(2)
print("imports ok: transformers", transformers.__version__, "from", transformers.__file__, "| huggingface_hub",
      huggingface_hub.__version__, "| peft", peft.__version__, "| accelerate", accelerate.__version__,
      "| omegaconf", omegaconf.__version__)
PY
}

install() {  # WHEEL... into $TARGET: pip, or (all of them are pure-Python wheels) unzipped
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$TARGET" "$@" 2>&1 \
    | grep -v "is ignored" || true
  local wheel
  for wheel in "$@"; do
    local name
    name=$(basename "$wheel" | cut -d- -f1)
    if ! ls -d "$TARGET/$name"-*.dist-info >/dev/null 2>&1; then
      log "pip did not install $wheel: unzipping it"
      "$PYTHON" -m zipfile -e "$wheel" "$TARGET"
    fi
  done
}

log "device:"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi | tee "$OUT/nvidia-smi.txt"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee -a "$OUT/nvidia-smi.txt"
else
  log "no nvidia-smi here"
fi
"$PYTHON" --version
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  log "no wheels in $WHEELS: run benchmarks/gpu/wheels.sh where PyPI answers, and carry the folder"
fi
rm -rf "$TARGET"
mkdir -p "$TARGET"
install "$WHEELS"/*.whl
log "installed $(ls "$WHEELS"/*.whl 2>/dev/null | wc -l) wheels into $TARGET"
if ! probe; then
  log "imports failed with the main wheels: adding $WHEELS/fallback"
  install "$WHEELS"/fallback/*.whl
  probe || log "imports still fail: the sections that need them will write their .error.json"
fi
export PYTHONPATH="$TARGET:$PWD"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 WANDB_MODE=disabled
LIMIT=$((295 - SECONDS))
if ((LIMIT > 290)); then LIMIT=290; fi
log "gpu_check.py under timeout ${LIMIT}s"
timeout -k 5 "$LIMIT" "$PYTHON" benchmarks/gpu/gpu_check.py --out "$OUT" --budget $((LIMIT - 10)) "$@" 2>&1 \
  | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
log "gpu_check.py exited $rc; files in $OUT:"
ls -la "$OUT"
exit "$rc"
