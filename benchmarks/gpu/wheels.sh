#!/usr/bin/env bash
# Download the wheels the lent GPU machine lacks for benchmarks/gpu/gpu_check.py, into benchmarks/gpu/wheels/.
#
#   bash benchmarks/gpu/wheels.sh          # here, where PyPI answers; prints each wheel's size and the total
#
# The device has python3 3.12, torch 2.11, transformers 5.17 (so huggingface_hub < 2), accelerate, peft,
# safetensors, tokenizers and pytest, no network and no package index. What the check imports needs, beyond that:
#   transformers   adarank needs >= 5.23; pinned to the version developed and tested here
#   huggingface_hub  transformers 5.25 requires >= 2.4 (5.17's was < 2); `import transformers` imports it
#   httpx2, httpcore2, truststore   huggingface_hub 2.x's HTTP client, imported with it (1.x used httpx)
#   omegaconf      adarank.config reads and checks configs with it (2.4 vendors antlr4: no antlr4 wheel)
#   torchao        model.quantization's backend (issue 41; the check's `quantized` section), a 1.3 MiB pure-Python
#                  wheel; bitsandbytes' (about 41 MiB) would not fit beside the rest, and adarank does not use it
# Not needed: kernels (transformers 5.25 lists it, but imports it only when installed), click and hf-xet
# (hub's CLI and Xet downloads: not imported by the check), datasets (see below).
#
# fallback/ (1.4 MiB) holds what the device may have in versions too old for the main set, which we cannot
# see from here: httpx2 / httpcore2's lower bounds (anyio >= 4.10, idna >= 3.18, h11 >= 0.16), and peft /
# accelerate at the versions tested here with transformers 5.25 and huggingface_hub 2.4. gpu_check.sh adds
# them only if its probe (the check's imports, then a tiny PEFT LoRA and AdaLoRA step) fails with the main set.
#
# datasets is left out: `adarank train` reads a CSV through datasets.load_dataset (imported unconditionally on
# that path), and datasets' own closure for cp312 (pyarrow 52.5 MiB, pandas 11.5, datasets, xxhash, tzdata,
# multiprocess, dill, dateutil: 65.7 MiB, measured with pip download) alone exceeds the 64 MiB that may travel.
# gpu_check.py skips its `adarank train` part, saying so, when datasets is missing, and trains through
# adarank.training.engine.train_loop directly with in-memory rows.
#
# The folder is ignored (benchmarks/gpu/.gitignore: 16 MiB of binaries must not be committed;
# `git check-ignore benchmarks/gpu/wheels` names that file), so it reaches the device only as a carry path:
#   run tool: command `bash benchmarks/gpu/gpu_check.sh "$OUT"`, carry ["benchmarks/gpu/wheels"], timeout_s 330
# (the working tree is ~11 MiB, the wheels ~16 MiB: within the 64 MiB that travel.)
set -euo pipefail
cd "$(dirname "$0")"
TRANSFORMERS=${TRANSFORMERS:-5.25.0}
MAIN=("transformers==$TRANSFORMERS" "huggingface_hub==2.4.0" "httpx2==2.17.0" "httpcore2==2.17.0"
      "truststore==0.10.5" "omegaconf==2.4.0" "torchao==0.18.0")
FALLBACK=("anyio==4.16.0" "idna==3.21" "h11==0.16.0" "peft==0.21.2" "accelerate==1.16.0")
rm -rf wheels
get() {  # DEST SPEC...
  local dest=$1
  shift
  pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --dest "$dest" "$@"
}
get wheels "${MAIN[@]}"
get wheels/fallback "${FALLBACK[@]}"
python3 - <<'PY'
from pathlib import Path

total = 0
for folder in (Path("wheels"), Path("wheels/fallback")):
    part = 0
    for wheel in sorted(folder.glob("*.whl")):
        size = wheel.stat().st_size
        part += size
        print(f"{size / 2**20:8.2f} MiB  {wheel}")
    print(f"{part / 2**20:8.2f} MiB  {folder}/ in all")
    total += part
print(f"{total / 2**20:8.2f} MiB  total")
PY
