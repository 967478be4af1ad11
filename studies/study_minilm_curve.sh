#!/usr/bin/env bash
# The MiniLM budget curve behind reports/minilm_curves.md (issue 16, part 1): all-MiniLM-L6-v2 on
# Rotten Tomatoes, adapters on all 36 linears, final budgets of 1/32, 1/8, 1/2 and 1 times LoRA r=1
# on them (41,472 parameters), 3 seeds, and the head trained alone as the floor: where the trained
# head does most of the work, allocation should matter little. Resumable and archived in
# studies/runs/minilm_curves/ like studies/study_budget.sh.
#
#   OMP_NUM_THREADS=2 studies/study_minilm_curve.sh     # about 5 min per run on 2 cores, 33 runs
#   python studies/budget_report.py studies/runs/minilm_curves --study minilm --out reports/minilm_curves.md
#
# Methods, all at lr 3e-3 (studies/configs/rt-minilm-curve.yaml says why):
#   head-only  adapter.target_modules=[]: the linear probe
#   adalora    adarank AdaLoRA at budget.target_params; init_rank 1 below one rank per module (b(0) is
#              then 32x, 8x, 2x b(T)), 2 at 1x
#   value-top  adarank LoRA on value: layer 5 at rank 1 (1/32), every layer at rank 1 (1/8), rank 4 (1/2)
#   qv-top     adarank LoRA on query + value (the LoRA paper's pick): the top 3 layers at rank 1 (1/8),
#              every layer at rank 2 (1/2); none fits 1/32
#   lora       adarank LoRA rank 1 on all 36 (1x)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/minilm_curve}
ARCHIVE=studies/runs/minilm_curves
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
ADA=studies/configs/rt-minilm-curve.yaml
LORA=studies/configs/rt-minilm-curve-lora.yaml
python -c "import adarank" || { echo "activate the venv with adarank installed (make install-dev)"; exit 1; }
COMMON="wandb.mode=disabled ${EXTRA:-}"
declare -A BUDGET=(
    [head-only/0]="adapter.target_modules=[]"
    [adalora/32]="budget.target_params=1296 budget.init_rank=1"
    [adalora/8]="budget.target_params=5184 budget.init_rank=1"
    [adalora/2]="budget.target_params=20736 budget.init_rank=1"
    [adalora/1]="budget.target_params=41472 budget.init_rank=2"
    [value-top/32]='adapter.target_modules=[re:.*layer\.5\.attention\.self\.value]'
    [value-top/8]="adapter.target_modules=[value]"
    [value-top/2]="adapter.target_modules=[value] budget.init_rank=4 budget.target_rank=4"
    [qv-top/8]='adapter.target_modules=[re:.*layer\.(3|4|5)\.attention\.self\.(query|value)]'
    [qv-top/2]="adapter.target_modules=[query,value] budget.init_rank=2 budget.target_rank=2"
    [lora/1]=""
)
declare -A CONFIG=([head-only]=$LORA [adalora]=$ADA [value-top]=$LORA [qv-top]=$LORA [lora]=$LORA)
failed=0
source studies/study_lib.sh
archive() { archive_runs "$OUT" "$ARCHIVE" adapters; }
restore_runs "$OUT" "$ARCHIVE"
point() { # METHOD FRACTION SEED
    python studies/sweep.py --out "$OUT/$1" --methods "${CONFIG[$1]}" --seeds "$3" \
        --budgets "${BUDGET[$1/$2]}" --set $COMMON || failed=1
    archive
}
for seed in 0 1 2; do point head-only 0 "$seed"; done
for fraction in 8 32 2; do
    for seed in 0 1 2; do
        for method in adalora value-top qv-top; do
            [ -n "${BUDGET[$method/$fraction]+x}" ] && point "$method" "$fraction" "$seed"
        done
    done
done
for seed in 0 1 2; do
    for method in adalora lora; do point "$method" 1 "$seed"; done
done
python studies/budget_report.py "$ARCHIVE" --study minilm --out reports/minilm_curves.md
exit $failed
