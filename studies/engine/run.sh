#!/usr/bin/env bash
# Issue 35's acceptance runs: the default job (`adarank train`, MiniLM + Rotten Tomatoes) with adarank
# 0.1.0's Trainer engine and with the new engine, seeds 0-2, old and new interleaved on one machine
# (old s0, new s0, old s1, ...), nothing else running. Each run is archived under
# studies/runs/engine/<engine>-seed<s>/ (metrics.json, config.yaml, allocation.json, train_log.json and a
# commit.txt naming the code that ran). Resumable: a finished run (metrics.json present) is skipped.
#
#   OLD=/path/to/worktree-at-0.1.0 NEW=/path/to/worktree-at-new-commit studies/engine/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-studies/runs/engine}
: "${OLD:?a worktree of adarank 0.1.0 (72bd570)}" "${NEW:?a worktree of the commit to measure}"
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for seed in 0 1 2; do
  for engine in old new; do
    tree=$OLD; [ "$engine" = new ] && tree=$NEW
    dest="$OUT/$engine-seed$seed"
    if [ -f "$dest/metrics.json" ]; then echo "skip $dest (done)"; continue; fi
    scratch=$(mktemp -d)
    echo "$(date -u +%FT%TZ) start $engine seed $seed ($(git -C "$tree" rev-parse --short HEAD))"
    (cd "$scratch" && PYTHONPATH="$tree" python -m adarank train "output_dir=$scratch/run" "seed=$seed" > "$scratch/log.txt" 2>&1)
    mkdir -p "$dest"
    cp "$scratch/run/"{metrics.json,config.yaml,allocation.json,train_log.json} "$dest/"
    { git -C "$tree" rev-parse HEAD; git -C "$tree" status --porcelain -- adarank | head -5; } > "$dest/commit.txt"
    rm -rf "$scratch"
    echo "$(date -u +%FT%TZ) done $engine seed $seed"
  done
done
