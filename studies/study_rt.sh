#!/usr/bin/env bash
# The equal-budget study behind reports/quality_rt.md, in priority order. Resumable: finished runs
# (a metrics.json in their folder) are skipped, so run it again to go on where it stopped.
#
#   OMP_NUM_THREADS=2 studies/study_rt.sh            # about 5 min per run on 2 cores, 46 runs
#
# 1. learning-rate grid per method at the larger budget, seed 0 (validation accuracy picks the lr)
# 2. 3 seeds x 2 budgets x 4 methods at each method's chosen lr
# 3. ablations of adarank AdaLoRA at the larger budget, 3 seeds
# 4. adarank AdaLoRA on all 36 linears (FFN too), rank 12 -> 8 on average, 3 seeds: where the rank goes
# then python studies/study_report.py writes reports/quality_rt.md.
# Each finished run's sweep.json, metrics.json and allocation.json are archived in studies/runs/study_rt/
# (committed: the report is rebuilt from them, and a new checkout restores them into $OUT, so the
# study resumes across machines and sessions without redoing finished runs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/study}
ARCHIVE=studies/runs/study_rt
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
ADA=configs/rt-minilm-adalora.yaml
LORA=configs/rt-minilm-lora.yaml
B8="budget.target_params=147648 budget.init_rank=12" # = LoRA r=8 on the 24 attention linears (769 per rank)
B2="budget.target_params=36912 budget.init_rank=3"   # = LoRA r=2
python -c "import adarank, peft" || { echo "activate the venv with adarank[dev] installed (make install-dev)"; exit 1; }
failed=0
source studies/study_lib.sh
archive() { archive_runs "$OUT" "$ARCHIVE"; }
restore_runs "$OUT" "$ARCHIVE" # finished runs are skipped
sweep() {
    python studies/sweep.py --set wandb.mode=disabled --out "$OUT" "$@" || failed=1
    archive
}
best() { python studies/study_report.py "$OUT" --best-lr "$1"; }

for lr in 1e-3 3e-4 3e-3; do
    sweep --methods "$ADA" "$LORA" "peft-lora:$LORA" --budgets "$B8 train.learning_rate=$lr"
done
# adarank's two methods scored best at the grid's edge (3e-3) on validation: one more point above it
sweep --methods "$ADA" "$LORA" --budgets "$B8 train.learning_rate=1e-2"
for lr in 3e-3 1e-2 1e-3; do # PEFT's AdaLoRA needs ~10x LoRA's lr (../shared/ASSETS.md)
    sweep --methods "peft-adalora:$ADA" --budgets "$B8 train.learning_rate=$lr"
done

METHODS=("$ADA" "$LORA" "peft-lora:$LORA" "peft-adalora:$ADA")
LRS=()
for name in rt-minilm-adalora rt-minilm-lora peft-lora_rt-minilm-lora peft-adalora_rt-minilm-adalora; do
    LRS+=("$(best "$name")") || { echo "no learning rate for $name: its grid runs failed (see $OUT)"; exit 1; }
done
for point in "$B8|1" "$B8|2" "$B2|0" "$B2|1" "$B2|2"; do
    for i in "${!METHODS[@]}"; do
        sweep --methods "${METHODS[$i]}" --budgets "${point%|*} train.learning_rate=${LRS[$i]}" --seeds "${point#*|}"
    done
done

for seed in 0 1 2; do
    for variant in budget.strict=true adapter.orth_weight=0 importance.score=sensitivity; do
        sweep --methods "$ADA" --budgets "$B8 train.learning_rate=${LRS[0]} $variant" --seeds "$seed"
    done
done

for seed in 0 1 2; do # the paper's pattern (more rank to FFN) needs FFN adapters; budget in triplets
    sweep --methods studies/configs/rt-minilm-adalora-all.yaml --budgets "train.learning_rate=${LRS[0]}" --seeds "$seed"
done

python studies/study_report.py "$ARCHIVE" --out reports/quality_rt.md
exit $failed
