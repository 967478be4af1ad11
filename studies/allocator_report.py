"""reports/allocator.md from the runs of studies/study_allocator.sh (issue 18): each allocator option
against the defaults before it, paired by seed, on the SmolLM2 generation task at two budgets and on the
known-answer benchmark, with the decision rule of the issue applied to the figures.

    python studies/allocator_report.py studies/runs/allocator --out reports/allocator.md

Reads RUNS/<variant>/<config>/<budget>/seed<k>/{sweep.json, metrics.json, train_log.json} (a budget is
named by its `budget.target_params`: 19080 = 1/16 of LoRA r=1's parameters, 305280 = 1x) and
RUNS/planted_<variant>-seed<k>.jsonl (studies/planted_rank.py). Differences are variant - reference,
paired by seed (the reference is base, the defaults before the ablation, except for the warm start,
which is run on the new defaults and compared with per-param): mean and 95% t-interval; `*` marks an
interval that excludes 0.

The lr-range measure (studies/study_lr.sh) is read from RUNS/lr/<method>/<config>/<budget>/seed<k>:
validation accuracy by lr, the contiguous range of grid lrs around the best within 1 point of it, and
its width in decades (log10 of highest / lowest); a range that reaches the grid's edge is a lower bound.

The decision rule (issue 18): an option becomes the default only if it wins clearly: an interval
that excludes 0 in its favour on some measure, or the same favourable sign on every seed of both
tasks; and no interval that excludes 0 against it. Better = higher exact match, lower answer loss,
higher recall, lower residual.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from budget_report import (
    LABELS,
    STUDIES,
    T95,
    Run,
    best_lrs,
    largest_grad_norm,
    load_runs,
    mean_sd,
    paired,
    write_report,
)

BUDGETS = {"4770": "1/64", "19080": "1/16", "76320": "1/4", "305280": "1x"}
CURVE = {"1/64": "1/64", "1/16": "1/16", "1/4": "1/4", "1x": "1"}  # this report's budget -> budget_report's
CURVE_LR = 2e-3  # the lr of every run here; budget_report's runs at it are shown beside their chosen lr's
VARIANTS = {
    "base": "the defaults before this ablation",
    "strict": "strict masking (`budget.strict=true`: no regrowth)",
    "reset": "reset the pruned triplets' Adam state (`budget.reset_pruned=true`)",
    "per-param": "score per parameter, greedy fill (`budget.selection=per_param`)",
    "no-orth": "no orthogonality penalty (`adapter.orth_weight=0`)",
    "task-only": "scores from the task loss alone (`importance.task_only=true`)",
    "warm": "gradient warm start (`adapter.init=gradient`; Δ against per-param, the defaults it would change)",
}
REFERENCE = {"warm": "per-param", "warm-m3": "m3"}  # variant -> the runs its Δ is against (default: base)
ANCHORS = {"base", "m3"}  # variants shown without a Δ: the references themselves
# the warm start's diagnostic (1/16 only): both starts with lambda's lr at 3x
DIAGNOSTIC = {
    "m3": "random start, lambda lr x3 (per-param)",
    "warm-m3": "gradient warm start, lambda lr x3 (per-param; Δ against the random start at x3)",
}
LR_METHODS = {
    "peft-lora": "PEFT LoRA r=8",
    "m10": "adarank AdaLoRA, lambda lr x10 (the default)",
    "m3": "adarank AdaLoRA, lambda lr x3",
    "m3-rs": "adarank AdaLoRA, lambda lr x3, scale alpha/sqrt(r)",
}
WITHIN = 1.0  # points of validation accuracy: the "within 1 point of the best"
# measure -> (label, scale, +1 if higher is better)
TASK = {"test_accuracy": ("exact match %", 100.0, +1), "test_answer_loss": ("answer loss", 1.0, -1)}
PLANTED = {"recall": ("recall", 1.0, +1), "residual": ("residual", 1.0, -1)}


@dataclass(frozen=True)
class Result:
    variant: str
    task: str  # "1/16", "1x" or "planted"
    seed: int
    values: dict[str, float]
    commit: str
    grad_norm: float | None = None


def load(folder: Path) -> list[Result]:
    """Every finished run under ``folder``: the SmolLM2 runs and the planted benchmark's."""
    out = []
    for marker in sorted(folder.glob("*/*/*/seed*/metrics.json")):
        point = json.loads((marker.parent / "sweep.json").read_text())
        found = re.search(r"budget\.target_params=(\d+)", point["budget"])
        if found is None or found.group(1) not in BUDGETS:
            continue
        metrics = json.loads(marker.read_text())
        values = {key: float(metrics[key]) for key in TASK if key in metrics}
        values["params"] = float(metrics["adapter_params_final"])
        variant = marker.relative_to(folder).parts[0]
        out.append(Result(variant, BUDGETS[found.group(1)], int(point["seed"]), values, point.get("commit", "?"),
                          largest_grad_norm(marker.parent / "train_log.json")))  # fmt: skip
    for file in sorted(folder.glob("planted_*.jsonl")):
        for line in file.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                values = {key: float(row[key]) for key in PLANTED}
                out.append(Result(row["variant"], "planted", int(row["seed"]), values, row.get("commit", "?")))
    return out


def by_seed(results: list[Result], variant: str, task: str) -> dict[int, Result]:
    return {r.seed: r for r in results if r.variant == variant and r.task == task}


def differences(results: list[Result], variant: str, task: str, key: str) -> list[float]:
    """variant - its reference (``REFERENCE``, else base) on ``key``, one per seed both ran, in seed order."""
    mine, base = by_seed(results, variant, task), by_seed(results, REFERENCE.get(variant, "base"), task)
    return [mine[s].values[key] - base[s].values[key] for s in sorted(set(mine) & set(base))]


def verdict(results: list[Result], variant: str, seeds: int = 3) -> str:
    """The issue's decision rule over every task and measure (see the module docstring)."""
    tasks = [("1/16", TASK), ("1x", TASK), ("planted", PLANTED)]
    signs, wins, losses = [], [], []
    for task, measures in tasks:
        for key, (label, scale, better) in measures.items():
            diffs = [better * scale * d for d in differences(results, variant, task, key)]
            if len(diffs) < seeds:
                return f"incomplete ({task} {label}: {len(diffs)} of {seeds} seeds)"
            half = T95[len(diffs) - 1] * statistics.stdev(diffs) / len(diffs) ** 0.5
            mean = statistics.mean(diffs)
            if mean - half > 0:
                wins.append(f"{task} {label}")
            if mean + half < 0:
                losses.append(f"{task} {label}")
            signs += diffs
    if losses:
        return "keep the default: worse beyond seed noise on " + ", ".join(losses)
    if wins:
        return "make it the default: better beyond seed noise on " + ", ".join(wins)
    if all(d > 0 for d in signs):
        return "make it the default: better on every seed, task and measure"
    return "keep the default: no clear win (mixed signs, within seed noise)"


def task_table(results: list[Result], task: str, variants: dict[str, str] = VARIANTS) -> list[str]:
    lines = [
        "| variant | seeds | exact match % | answer loss | params | largest grad norm | Δ exact match | "
        "Δ answer loss | Δ EM by seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, label in variants.items():
        runs = by_seed(results, variant, task)
        if not runs:
            continue
        done = [runs[s] for s in sorted(runs)]
        norms = [r.grad_norm for r in done if r.grad_norm is not None]
        em = differences(results, variant, task, "test_accuracy")
        loss = differences(results, variant, task, "test_answer_loss")
        largest = f"{max(norms):.1f}" if norms else "-"
        deltas = ["", "", ""] if variant in ANCHORS else [
            paired([100 * d for d in em]), paired(loss), " ".join(f"{100 * d:+.2f}" for d in em)
        ]  # fmt: skip
        lines.append(
            f"| {label} | {len(done)} | {mean_sd([r.values['test_accuracy'] for r in done], 100, 2)} | "
            f"{mean_sd([r.values['test_answer_loss'] for r in done])} | "
            f"{round(statistics.mean(r.values['params'] for r in done)):,} | {largest} | {' | '.join(deltas)} |"
        )
    return lines


def planted_table(results: list[Result]) -> list[str]:
    lines = ["| variant | seeds | recall | residual | Δ recall | Δ residual |", "|---|---|---|---|---|---|"]
    for variant, label in VARIANTS.items():
        runs = by_seed(results, variant, "planted")
        if not runs:
            continue
        done = [runs[s] for s in sorted(runs)]
        base = variant == "base"
        lines.append(
            f"| {label} | {len(done)} | {mean_sd([r.values['recall'] for r in done])} | "
            f"{mean_sd([r.values['residual'] for r in done], digits=4)} | "
            f"{'' if base else paired(differences(results, variant, 'planted', 'recall'))} | "
            f"{'' if base else paired(differences(results, variant, 'planted', 'residual'))} |"
        )
    return lines


def curve_rows(runs: list[Run], fraction: str) -> dict[tuple[str, float], dict[int, Run]]:
    """The budget study's runs at ``fraction``, by (method, lr) and seed: at lr 2e-3 and at the lr each
    method chose, where present; a seed run twice (grid and seed phase) counts once, the seed phase's."""
    chosen = best_lrs(runs, STUDIES["smollm2"].lr_grid)
    out: dict[tuple[str, float], dict[int, Run]] = {}
    for run in runs:
        if run.fraction == fraction and run.lr in {CURVE_LR, chosen.get(run.method)}:
            seeds = out.setdefault((run.method, run.lr), {})
            if run.seed not in seeds or run.seed_phase:
                seeds[run.seed] = run
    return out


def curve_table(results: list[Result], runs: list[Run]) -> list[str]:
    """AdaLoRA with the new default (per-param, lr 2e-3) at every budget of the curve beside the budget
    study's methods at 2e-3 and at their chosen lr; Δ = that method - new-default AdaLoRA, by seed."""
    lines = [
        "| budget | method (lr) | seeds | exact match % | answer loss | params | Δ exact match vs new default |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, fraction in CURVE.items():
        mine = by_seed(results, "per-param", task)
        if not mine:
            continue
        done = [mine[s] for s in sorted(mine)]
        lines.append(
            f"| {task} | **adarank AdaLoRA, new default (per-param)** (2e-3) | {len(done)} | "
            f"{mean_sd([r.values['test_accuracy'] for r in done], 100, 2)} | "
            f"{mean_sd([r.values['test_answer_loss'] for r in done])} | "
            f"{round(statistics.mean(r.values['params'] for r in done)):,} | |"
        )
        for (method, lr), seeds in sorted(curve_rows(runs, fraction).items()):
            other = [seeds[s] for s in sorted(seeds)]
            diffs = [100 * (seeds[s].metrics["test_accuracy"] - mine[s].values["test_accuracy"])
                     for s in sorted(set(seeds) & set(mine))]  # fmt: skip
            lines.append(
                f"| {task} | {LABELS.get(method, method)} ({lr:g}) | {len(other)} | "
                f"{mean_sd([r.metrics['test_accuracy'] for r in other], 100, 2)} | "
                f"{mean_sd([r.metrics['test_answer_loss'] for r in other])} | "
                f"{round(statistics.mean(r.params for r in other)):,} | {paired(diffs)} |"
            )
    return lines


PROBE = {"probe-mult10": "lambda lr x10 (the default)", "probe-mult3": "lambda lr x3"}


def probe_table(results: list[Result]) -> list[str]:
    """The lr probe: the new defaults at lr 8e-3, 1/16, with lambda's lr multiplier 10 and 3, by seed."""
    lines = [
        "| lambda lr multiplier | seeds | exact match % | answer loss | largest grad norm by seed | EM by seed |",
        "|---|---|---|---|---|---|",
    ]
    for variant, label in PROBE.items():
        runs = by_seed(results, variant, "1/16")
        if not runs:
            continue
        done = [runs[s] for s in sorted(runs)]
        norms = " ".join(f"{r.grad_norm:.1f}" if r.grad_norm is not None else "-" for r in done)
        ems = " ".join(f"{100 * r.values['test_accuracy']:.2f}" for r in done)
        lines.append(
            f"| {label} | {len(done)} | {mean_sd([r.values['test_accuracy'] for r in done], 100, 2)} | "
            f"{mean_sd([r.values['test_answer_loss'] for r in done])} | {norms} | "
            f"{ems} |"
        )
    return lines


@dataclass(frozen=True)
class LrRun:
    method: str
    lr: float
    seed: int
    validation: float  # accuracy, %
    test: float  # accuracy, %
    commit: str


def load_lr(folder: Path) -> list[LrRun]:
    """The lr-range runs (studies/study_lr.sh) under ``folder``: RUNS/lr/<method>/<config>/<budget>/seed<k>."""
    out = []
    for marker in sorted(folder.glob("*/*/*/seed*/metrics.json")):
        point = json.loads((marker.parent / "sweep.json").read_text())
        found = re.search(r"train\.learning_rate=([0-9.eE+-]+)", point["budget"])
        if found is None:
            continue
        metrics = json.loads(marker.read_text())
        out.append(LrRun(marker.relative_to(folder).parts[0], float(found.group(1)), int(point["seed"]),
                         100 * float(metrics["validation_accuracy"]), 100 * float(metrics["eval_accuracy"]),
                         point.get("commit", "?")))  # fmt: skip
    return out


def good_range(curve: dict[float, float], within: float = WITHIN) -> tuple[float, float, bool]:
    """(lowest lr, highest lr, reaches the grid's edge) of the contiguous grid lrs around the best score
    whose score is within ``within`` of it."""
    lrs = sorted(curve)
    best = max(lrs, key=lambda lr: curve[lr])
    low = high = lrs.index(best)
    while low > 0 and curve[lrs[low - 1]] >= curve[best] - within:
        low -= 1
    while high < len(lrs) - 1 and curve[lrs[high + 1]] >= curve[best] - within:
        high += 1
    return lrs[low], lrs[high], low == 0 or high == len(lrs) - 1


def lr_curves(runs: list[LrRun]) -> dict[tuple[str, int], dict[float, LrRun]]:
    """(method, seed) -> lr -> run, in LR_METHODS' order, seeds ascending."""
    return {(m, seed): {r.lr: r for r in runs if r.method == m and r.seed == seed}
            for m in LR_METHODS for seed in sorted({r.seed for r in runs if r.method == m})}  # fmt: skip


def width(low: float, high: float) -> float:
    """A range's width in decades."""
    return math.log10(high / low)


def lr_table(runs: list[LrRun]) -> list[str]:
    """Validation accuracy by lr, one row per method and seed: the best, the range within 1 point of it and
    its width in decades; test accuracy at each lr below."""
    lrs = sorted({r.lr for r in runs})
    head = " | ".join(f"{lr:g}" for lr in lrs)
    lines = [f"| method | seed | {head} | best | range within {WITHIN:g} point | width (decades) |",
             "|---|---|" + "---|" * len(lrs) + "---|---|---|"]  # fmt: skip
    tests = [f"| method | seed | {head} |", "|---|---|" + "---|" * len(lrs)]
    for (method, seed), mine in lr_curves(runs).items():
        label = LR_METHODS[method]
        curve = {lr: run.validation for lr, run in mine.items()}
        low, high, edge = good_range(curve)
        best = max(curve, key=lambda lr: curve[lr])
        cells = " | ".join(f"{curve[lr]:.2f}" if lr in curve else "-" for lr in lrs)
        lines.append(f"| {label} | {seed} | {cells} | {best:g} ({curve[best]:.2f}) | {low:g} .. {high:g} | "
                     f"{'≥ ' if edge else ''}{width(low, high):.1f} |")  # fmt: skip
        cells = " | ".join(f"{mine[lr].test:.2f}" if lr in mine else "-" for lr in lrs)
        tests.append(f"| {label} | {seed} | {cells} |")
    return [*lines, "", "Test accuracy % at each lr (read after the ranges above, which use validation only):", "",
            *tests]  # fmt: skip


def lr_widths(runs: list[LrRun], seed: int = 0) -> dict[str, float]:
    """Method -> the width (decades) of its good lr range on ``seed``."""
    return {m: width(*good_range({lr: r.validation for lr, r in mine.items()})[:2])
            for (m, s), mine in lr_curves(runs).items() if s == seed}  # fmt: skip


def lr_decision(runs: list[LrRun]) -> str:
    """The issue's aim (a good-lr range as wide as PEFT LoRA's) checked for the default and each candidate."""
    widths = lr_widths(runs)
    if "peft-lora" not in widths or "m10" not in widths:
        return "incomplete (PEFT LoRA's or the default's grid has no run)"
    reference, default = widths["peft-lora"], widths["m10"]
    others = "; ".join(f"{LR_METHODS[m]}: {w:.1f} ({'at least as wide' if w >= reference - 1e-9 else 'narrower'})"
                       for m, w in widths.items() if m not in ("peft-lora", "m10"))  # fmt: skip
    if default >= reference - 1e-9:
        head = (f"the default's good lr range is at least as wide as PEFT LoRA r=8's ({default:.1f} vs {reference:.1f} "
                "decades, seed 0), so no candidate is needed and no default changed")  # fmt: skip
    else:
        head = (f"the default's good lr range is narrower than PEFT LoRA r=8's ({default:.1f} vs {reference:.1f} "
                "decades)")  # fmt: skip
    return f"{head}. The candidates: {others}." if others else f"{head}."


def report(
    results: list[Result], command: str, budget_runs: list[Run] | None = None, lr_runs: list[LrRun] | None = None
) -> str:
    commits = sorted({r.commit for r in results})
    text = [
        "# Allocator options against the defaults before them (issue 18)",
        "",
        "Every option of the allocator run against the defaults of the time (`budget.selection=prefix`) "
        "with the same seeds: SmolLM2-135M-Instruct "
        "on Rotten Tomatoes as generation (the budget-curve task, adapters on all 210 linears, 80 steps, "
        "exact match and answer loss on the first 600 test rows) at a final budget of 1/16 of LoRA r=1's "
        "parameters (19,080, below one rank per module) and at 1x (305,280), lr 2e-3 for every variant; "
        "and the known-answer benchmark (studies/planted_rank.py: MiniLM, ranks planted in 4 of 36 "
        "modules, final budget = the planted one). Δ = variant − defaults, paired by seed, mean [95% "
        "t-interval]; * = the interval excludes 0. The warm start came after per-param became the default: it "
        "is run on the new defaults and its Δ is against per-param.",
        "",
        "Commands:",
        "",
        "    for w in 1 2; do OMP_NUM_THREADS=1 setsid nohup studies/study_allocator.sh "
        "> /tmp/allocator_$w.log 2>&1 & done",
        f"    {command}",
        "",
        f"{len(results)} runs; commits: {', '.join(commits) if commits else '-'}.",
        "",
    ]
    for task in ("1/16", "1x"):
        text += [f"## SmolLM2, final budget {task} of LoRA r=1", "", *task_table(results, task), ""]
    text += ["## The known-answer benchmark (MiniLM, planted ranks)", "", *planted_table(results), ""]
    text += ["## Decisions (the issue's rule, applied to the tables)", ""]
    text += [f"- {VARIANTS[v]}: {verdict(results, v)}" for v in VARIANTS if v != "base"]
    text += [
        "",
        "How far to trust it: each option meets 6 measures (exact match and answer loss at two budgets, recall "
        f"and residual), {len(VARIANTS) - 1} options in all; at 95% about one of {6 * (len(VARIANTS) - 1)} "
        "intervals excludes 0 by chance alone, so a "
        "single significant measure is weak evidence; the by-seed columns show whether a sign holds. Exact "
        "match moves in steps of 1/600 (0.17 points). The variants share the base's seeds, data order and "
        "rows, one thread each; between the commits listed above only the options changed (each off unless set), "
        "so a pair differs by its option.",
    ]
    if any(r.variant in PROBE for r in results):
        text += ["", "## A probe toward lr robustness", "",
                 "Not the issue's measure (the width of the lr range within 1 point of the best); one question: "
                 "at lr 8e-3, where the budget study's AdaLoRA diverged on seeds 1 and 2 at 1/16, does a lower "
                 "learning-rate multiplier for lambda keep every seed stable? The new defaults, 1/16, 3 seeds.", "",
                 *probe_table(results)]  # fmt: skip
    if any(r.variant in DIAGNOSTIC for r in results):
        text += ["", "## The warm start at a lower lambda lr (a diagnostic)", "",
                 "At lambda x10 the warm start's largest gradient norms (tables above) are far above the random "
                 "start's: triplets that all start on steep directions may overshoot at lambda's lr. Both starts "
                 "with lambda's lr at 3x, 1/16, 3 seeds (per-param, lr 2e-3); Δ = warm − random, paired by seed.", "",
                 *task_table(results, "1/16", DIAGNOSTIC)]  # fmt: skip
    if lr_runs:
        commits = ", ".join(sorted({r.commit for r in lr_runs}))
        text += ["", "## Learning-rate robustness: the width of the good lr range", "",
                 "The issue's measure: validation accuracy by lr on the task where the gap was seen "
                 "(reports/quality_rt.md: MiniLM on Rotten Tomatoes, 24 attention linears, the budget of LoRA r=8 = "
                 "147,648 parameters, AdaLoRA 12 -> 8, 400 steps, batch 32), lr 1e-4 to 3e-2 in half decades; the "
                 "range is the contiguous grid lrs around the best whose validation accuracy is within 1 point of "
                 "the best, its width log10(highest / lowest) (0.5 = one grid step; ≥ = the range reaches the "
                 "grid's edge). One validation example is 0.08 points (1,245 rows); seed-to-seed spread at one lr "
                 f"is about 1 point (reports/quality_rt.md). `studies/study_lr.sh`; {len(lr_runs)} runs, "
                 f"commits: {commits}.",
                 "", *lr_table(lr_runs), "", f"Decision: {lr_decision(lr_runs)}"]  # fmt: skip
    if budget_runs:
        text += ["", "## The budget curve redrawn with the new default", "",
                 "adarank AdaLoRA with `budget.selection=per_param` at lr 2e-3 at every budget of the curve, beside "
                 "the methods of reports/budget_curves.md at 2e-3 and at the lr each chose (runs of that study, "
                 "other commits; same seeds, data and rows). Δ = that method − new-default AdaLoRA, by seed.", "",
                 *curve_table(results, budget_runs)]  # fmt: skip
    return "\n".join(text) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, default=Path("reports/allocator.md"))
    parser.add_argument(
        "--curves", type=Path, default=Path("studies/runs/budget_curves"), help="the budget study's runs"
    )
    args = parser.parse_args(argv)
    results = load(args.runs)
    budget_runs = load_runs(args.curves, STUDIES["smollm2"]) if args.curves.is_dir() else []
    lr_runs = load_lr(args.runs / "lr") if (args.runs / "lr").is_dir() else []
    command = f"python studies/allocator_report.py {args.runs} --out {args.out}"
    write_report(args.out, report(results, command, budget_runs, lr_runs))
    print(f"wrote {args.out} ({len(results)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
