#!/usr/bin/env bash
# What was learned on the bundled task (reports/understand.md, issue 22): the runs behind `adarank analyze`
# and `adarank intrinsic-dim`. Resumable: a finished run is skipped, intrinsic-dim resumes from its points.
#
#   OMP_NUM_THREADS=2 studies/study_understand.sh      # about 95 min on 2 cores (1.5 s per step)
#
# 1. The default job (AdaLoRA 12 -> 8 on the 24 attention linears) with seeds 0, 1, 2, and LoRA r=8 and
#    r=32 on the same modules (configs/rt-minilm-lora.yaml): native adapters archived in studies/runs/understand/,
#    each with a commit.txt (the commit it ran at, +dirty with uncommitted changes; runs archived before
#    this was added have none).
# 2. The intrinsic dimension in the MiniLM budget curve's setting (studies/configs/rt-minilm-curve.yaml: all 36
#    linears, 10.6M weights) at 150 steps instead of 400 (the time this study had): the floor is the head
#    trained alone (lr 3e-3), the head is then fixed at that optimum; the reference a full fine-tune of the
#    36 linears and the head at lr 1e-4; theta_d at lr 1e-2 (untuned); grid 1024..65536 (x4), 2 seeds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/understand}
ARCHIVE=studies/runs/understand
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
python -c "import adarank" || { echo "activate the venv with adarank installed (make install-dev)"; exit 1; }
source studies/study_lib.sh
failed=0
run() { # NAME CONFIG OVERRIDES...
    local name=$1 config=$2
    shift 2
    if [ ! -f "$OUT/$name/metrics.json" ]; then
        echo "== $name: adarank train $config $*"
        local commit
        commit=$(run_commit) # the code this run trains with, taken before it starts
        python -m adarank train "$config" "output_dir=$OUT/$name" overwrite=true wandb.mode=disabled "$@" \
            > "$OUT/$name.log" 2>&1 || { failed=1; echo "   failed: see $OUT/$name.log"; return; }
        echo "$commit" > "$OUT/$name/commit.txt" # archived with the run (archive_run)
    fi
    archive_run "$OUT/$name" "$ARCHIVE/$name" adapters
}
mkdir -p "$OUT"
for seed in 0 1 2; do run "adalora-seed$seed" configs/default.yaml "seed=$seed"; done
run lora-r8 configs/rt-minilm-lora.yaml
run lora-r32 configs/rt-minilm-lora.yaml budget.init_rank=32 budget.target_rank=32
echo "== intrinsic-dim"
commit=$(run_commit) # it resumes from its points: each invocation adds the commit it ran at to commit.txt
python -m adarank intrinsic-dim studies/configs/rt-minilm-curve.yaml "output_dir=$OUT/intrinsic-dim" wandb.mode=disabled \
    train.max_steps=150 intrinsic_dim.head=fixed intrinsic_dim.reference_learning_rate=1e-4 \
    intrinsic_dim.min_dim=1024 intrinsic_dim.max_dim=65536 intrinsic_dim.grid_factor=4 intrinsic_dim.seeds=2 \
    > "$OUT/intrinsic-dim.log" 2>&1 || { failed=1; echo "   failed: see $OUT/intrinsic-dim.log"; }
mkdir -p "$OUT/intrinsic-dim" "$ARCHIVE/intrinsic-dim"
echo "$commit" >> "$OUT/intrinsic-dim/commit.txt"
cp "$OUT/intrinsic-dim"/intrinsic_dim* "$OUT/intrinsic-dim/commit.txt" "$ARCHIVE/intrinsic-dim/" 2>/dev/null
exit $failed
