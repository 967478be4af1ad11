#!/usr/bin/env bash
# The capacity study of issue 39 (reports/capacity.md): where adapter capacity binds on a real model.
# Resumable: a finished run (a metrics.json in its folder) is skipped, every finished run's small files
# are archived in studies/runs/capacity/ (committed) and restored into $OUT on start.
#
#   OMP_NUM_THREADS=1 studies/study_capacity.sh pilot     # two workers: run it twice, side by side
#   OMP_NUM_THREADS=1 studies/study_capacity.sh grid      # the same
#
# Pilot: does a task's quality fall steeply as LoRA's budget shrinks?
# LoRA at 1/64, 1/8 and 1x of LoRA r=1 on all 210 linears of SmolLM2 (305,490 parameters), one seed, and a
# second seed at one budget for the seed spread, on two tasks:
#   facts  invented facts (studies/facts.py), the SELECTION draw (seed 1): exact match and answer loss on
#          the trained facts (capacity, not generalisation). Every choice is made on this draw; the study
#          reports on another (seed 0), never read by the pilot.
#   bbc    the BBC News articles as language modelling, all 210 linears: validation perplexity on the
#          first 20 validation articles (the issue's probe, archived here).
# Below one rank per module LoRA runs on modules picked by hand, as a practitioner would:
#   1/64  v_proj of 6 layers spread over depth (0 6 12 17 23 29): 6 x 769 = 4,614 parameters
#   1/8   v_proj + o_proj of the top 20 layers (10-29): 20 x 1,922 = 38,440
#   1x    rank 1 on every module: 305,490
#
# Grid (the lr grid of the facts study, seed 0, on the SELECTION draw; the issue's cut: one grid at the
# middle budget, reused at the others): 5e-4, 2e-3, 8e-3, 3.2e-2 (1.8 decades) for each arm at 1/8 =
# 38,440 parameters (adarank AdaLoRA; the hand picks v_proj + o_proj of the top 20 layers and down_proj
# of the top 18 layers, 18 x 2,113 = 38,034) and at 1x for the arms that cannot go below it (uniform LoRA
# r=1, PEFT's AdaLoRA at init_r 2 -> target_r 1, PEFT's EVA at r = 1, rho 2). The best lr of each arm
# (lowest answer loss) is the one its reported runs use; an arm whose best lr is at the grid's edge gets
# the grid extended on that side (grid-extend). Allocate-then-train at 1/8 (att-8): a search of 40 steps
# (a quarter of the schedule) of adarank AdaLoRA at the lr, then `adapter.ranks_from` = the search's
# allocation, trained from a fresh start for the full 160 steps at the same lr.
#
# grid-extend: every arm whose best lr sits at an edge of the lrs tried gets the next lr beyond it (x4 or
# /4), until its best is inside (studies/capacity_report.py --next-lr).
#
# seeds: the reported runs, on the REPORT draw (facts seed 0, never read before), seeds 0, 1, 2, each arm at
# its chosen lr (capacity_report.py --best-lr; an arm whose lr is not chosen yet is skipped, said): adarank
# AdaLoRA at 1/64, 1/8, 1x, 4x; the hand picks (v_proj of 6 layers at 1/64 with vo_top's lr; vo_top and
# down18 at 1/8); uniform LoRA r=1 (1x) and r=4 (4x, r=1's lr); PEFT AdaLoRA and EVA at 1x and 4x (1x's
# lr); allocate-then-train at 1/64, 1/8, 1x (att-8's lr). One budget at a time, 1/8 first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/capacity}
ARCHIVE=studies/runs/capacity
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
python -c "import adarank, peft" || { echo "activate the venv with adarank[dev] installed (make install-dev)"; exit 1; }
source studies/study_lib.sh
restore_runs "$OUT" "$ARCHIVE"
CLAIMS=$OUT/.claims
failed=0
SELECT=$OUT/facts-select
[ -f "$SELECT/facts.jsonl" ] || python studies/facts.py --facts 256 --seed 1 --out "$SELECT" > /dev/null 2>&1 ||
    { echo "could not write the facts to $SELECT"; exit 1; }
REPORT=$OUT/facts-report
if [ "${1:-}" = seeds ] && [ ! -f "$REPORT/facts.jsonl" ]; then
    python studies/facts.py --facts 256 --seed 0 --out "$REPORT" > /dev/null 2>&1 ||
        { echo "could not write the facts to $REPORT"; exit 1; }
fi

FACTS_ADA=studies/configs/facts-smollm2.yaml
FACTS_LORA=studies/configs/facts-smollm2-lora.yaml
BBC_LORA=studies/configs/bbc-smollm2-lora.yaml
declare -A PICK=(
    [64]='adapter.target_modules=[re:model\.layers\.(0|6|12|17|23|29)\.self_attn\.v_proj]'
    [8]='adapter.target_modules=[re:model\.layers\.(10|11|12|13|14|15|16|17|18|19|20|21|22|23|24|25|26|27|28|29)\.self_attn\.(v_proj|o_proj)]'
    [1]=''
)
declare -A TASK=([facts]="$FACTS_LORA|data.dataset=$SELECT" [bbc]="$BBC_LORA|")
# run TASK FRACTION LR SEED: one LoRA run into $OUT/pilot/<task>, archived when it finishes
run_point() {
    local task=$1 fraction=$2 lr=$3 seed=$4 spec=${TASK[$1]}
    python studies/sweep.py --out "$OUT/pilot/$task" --methods "${spec%|*}" --seeds "$seed" \
        --budgets "${PICK[$fraction]} train.learning_rate=$lr" --set wandb.mode=disabled ${spec#*|} || failed=1
    archive_runs "$OUT" "$ARCHIVE"
}
point() { claimed "$CLAIMS" "pilot-$1-$2-$3-$4" run_point "$@"; }

DOWN18='adapter.target_modules=[re:model\.layers\.(12|13|14|15|16|17|18|19|20|21|22|23|24|25|26|27|28|29)\.mlp\.down_proj]'
# the study's arms on facts: config|overrides (the budget's), by name
declare -A ARM=(
    [adalora-8]="$FACTS_ADA|budget.target_params=38440"
    [vo_top-8]="$FACTS_LORA|${PICK[8]}"
    [down18-8]="$FACTS_LORA|$DOWN18"
    [lora_r1-1]="$FACTS_LORA|"
    [peft_adalora-1]="peft-adalora:$FACTS_ADA|"
    [peft_eva-1]="peft-eva:$FACTS_LORA|"
)
# the reported points: name -> config|overrides|the grid arm whose lr it takes
declare -A SEEDED=(
    [adalora-64]="$FACTS_ADA|budget.target_params=4614|adalora-8"
    [adalora-8]="$FACTS_ADA|budget.target_params=38440|adalora-8"
    [adalora-1]="$FACTS_ADA|budget.target_params=305490|adalora-8"
    [adalora-4x]="$FACTS_ADA|budget.target_params=1221960 budget.init_rank=8|adalora-8"
    [vspread-64]="$FACTS_LORA|${PICK[64]}|vo_top-8"
    [vo_top-8]="$FACTS_LORA|${PICK[8]}|vo_top-8"
    [down18-8]="$FACTS_LORA|$DOWN18|down18-8"
    [lora_r1-1]="$FACTS_LORA||lora_r1-1"
    [lora_r4-4x]="$FACTS_LORA|budget.init_rank=4 budget.target_rank=4|lora_r1-1"
    [peft_adalora-1]="peft-adalora:$FACTS_ADA||peft_adalora-1"
    [peft_adalora-4x]="peft-adalora:$FACTS_ADA|budget.init_rank=8 budget.target_rank=4|peft_adalora-1"
    [peft_eva-1]="peft-eva:$FACTS_LORA||peft_eva-1"
    [peft_eva-4x]="peft-eva:$FACTS_LORA|budget.init_rank=4 budget.target_rank=4|peft_eva-1"
)
declare -A ATT=([att-64]=4614 [att-8]=38440 [att-1]=305490)
chosen_lr() { python studies/capacity_report.py "$OUT" --best-lr "$1"; }
# seed_point NAME SEED: a reported point on the report draw into $OUT/seeds/facts/<name>
seed_point() {
    local name=$1 seed=$2 spec lr config rest overrides from
    if [ -n "${ATT[$name]:-}" ]; then att_seed_point "$name" "$seed"; return; fi
    spec=${SEEDED[$name]}
    config=${spec%%|*}
    rest=${spec#*|}
    overrides=${rest%|*}
    from=${rest##*|}
    lr=$(chosen_lr "$from")
    [ -n "$lr" ] || { echo "$name: the lr of $from is not chosen yet (grid incomplete or best at an edge)"; return; }
    sweep_point "$OUT" "$ARCHIVE" "$OUT/seeds/facts/$name" "$config" "$seed" "$overrides train.learning_rate=$lr" \
        wandb.mode=disabled "data.dataset=$REPORT" || failed=1
}
# att_run SEARCH_DIR DIR DRAW SEED PARAMS LR: allocate-then-train: a search of 40 steps (a quarter of the
# schedule) of adarank AdaLoRA at PARAMS into SEARCH_DIR, then the ranks it found (`adapter.ranks_from`)
# trained from a fresh start for the full schedule into DIR, both at LR, on the facts in DRAW
att_run() {
    local search_dir=$1 dir=$2 draw=$3 seed=$4 params=$5 lr=$6 search
    sweep_point "$OUT" "$ARCHIVE" "$search_dir" "$FACTS_ADA" "$seed" \
        "budget.target_params=$params train.learning_rate=$lr train.max_steps=40" wandb.mode=disabled \
        "data.dataset=$draw" || { failed=1; return; }
    search=$(find "$search_dir" -path "*learning_rate-${lr}_*/seed$seed" -type d | head -1)
    sweep_point "$OUT" "$ARCHIVE" "$dir" "$FACTS_ADA" "$seed" "adapter.ranks_from=$search train.learning_rate=$lr" \
        wandb.mode=disabled "data.dataset=$draw" || failed=1
}
# att_seed_point NAME SEED: allocate-then-train on the report draw at att-8's chosen lr
att_seed_point() {
    local name=$1 seed=$2 lr
    lr=$(chosen_lr att-8)
    [ -n "$lr" ] || { echo "$name: the lr of att-8 is not chosen yet"; return; }
    att_run "$OUT/seeds/facts/search-${name#att-}" "$OUT/seeds/facts/$name" "$REPORT" "$seed" "${ATT[$name]}" "$lr"
}
# att_point LR: allocate-then-train at 1/8 on the selection draw, seed 0 (the grid)
att_point() { att_run "$OUT/grid/facts/search-8" "$OUT/grid/facts/att-8" "$SELECT" 0 38440 "$1"; }
# grid_point ARM LR: the arm at lr on the selection draw, seed 0, into $OUT/grid/facts/<arm>
grid_point() {
    local arm=$1 lr=$2 spec=${ARM[$1]}
    sweep_point "$OUT" "$ARCHIVE" "$OUT/grid/facts/$arm" "${spec%%|*}" 0 "${spec#*|} train.learning_rate=$lr" \
        wandb.mode=disabled "data.dataset=$SELECT" || failed=1
}

case ${1:-} in
pilot)
    # facts: the lr first (at 1x and 1/64), then the budgets at the better lr of each
    for lr in 2e-3 8e-3; do for fraction in 1 64; do point facts "$fraction" "$lr" 0; done; done
    for lr in 2e-3 8e-3; do point facts 8 "$lr" 0; done
    point facts 8 8e-3 1
    # bbc: the issue's probe settings (lr 1e-3)
    for fraction in 1 64 8; do point bbc "$fraction" 1e-3 0; done
    point bbc 8 1e-3 1
    ;;
grid)
    for lr in 8e-3 2e-3 3.2e-2 5e-4; do
        for arm in adalora-8 vo_top-8 down18-8 lora_r1-1; do claimed "$CLAIMS" "grid-$arm-$lr" grid_point "$arm" "$lr"; done
    done
    ;;
grid-extend)
    for arm in adalora-8 vo_top-8 down18-8 lora_r1-1 peft_adalora-1 peft_eva-1 att-8; do
        while lr=$(python studies/capacity_report.py "$OUT" --next-lr "$arm") && [ -n "$lr" ]; do
            if [ "$arm" = att-8 ]; then claimed "$CLAIMS" "grid-$arm-$lr" att_point "$lr"
            else claimed "$CLAIMS" "grid-$arm-$lr" grid_point "$arm" "$lr"; fi
            wait_for_claims "$CLAIMS"
        done
    done
    ;;
seeds)
    # one budget at a time, its three seeds before the next budget (1/8 first: the comparison the study is
    # for), so a study cut short still has whole comparisons
    for group in "adalora-8 vo_top-8 down18-8 att-8" "adalora-64 vspread-64 att-64" \
        "adalora-1 lora_r1-1 peft_adalora-1 peft_eva-1 att-1" "adalora-4x lora_r4-4x peft_adalora-4x peft_eva-4x"; do
        for seed in 0 1 2; do
            for name in $group; do claimed "$CLAIMS" "seeds-$name-$seed" seed_point "$name" "$seed"; done
        done
    done
    ;;
grid2)
    # the arms added at the next commit (PEFT's adaptive methods, allocate-then-train), same grid
    for lr in 8e-3 2e-3 3.2e-2 5e-4; do
        for arm in peft_adalora-1 peft_eva-1; do claimed "$CLAIMS" "grid-$arm-$lr" grid_point "$arm" "$lr"; done
        claimed "$CLAIMS" "grid-att-8-$lr" att_point "$lr"
    done
    ;;
*)
    echo "usage: $0 pilot | grid | grid2 | grid-extend | seeds"
    exit 2
    ;;
esac
exit $failed
