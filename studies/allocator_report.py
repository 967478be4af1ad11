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
# the same measures on the first 600 validation rows, which no decision here read
VALIDATION = {"validation_accuracy": ("exact match %", 100.0, +1), "validation_answer_loss": ("answer loss", 1.0, -1)}
SPLIT = {"test": TASK, "validation": VALIDATION}
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
        values = {key: float(metrics[key]) for key in (*TASK, *VALIDATION) if key in metrics}
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


def verdict(results: list[Result], variant: str, seeds: int = 3, split: str = "test") -> str:
    """The issue's decision rule over every task and measure (see the module docstring), on the SmolLM2
    runs' ``split`` rows ("test": the rows the decisions were made on; "validation")."""
    tasks = [("1/16", SPLIT[split]), ("1x", SPLIT[split]), ("planted", PLANTED)]
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


def validation_table(results: list[Result]) -> list[str]:
    """Each option's Δ on the first 600 validation rows (no decision read them), at both budgets, and the
    issue's rule applied with them in place of the test rows."""
    lines = [
        "| variant | 1/16: Δ exact match | 1/16: Δ answer loss | 1x: Δ exact match | 1x: Δ answer loss | "
        "Δ EM by seed (1/16; 1x) | the rule on the validation rows (and the planted benchmark) |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, label in VARIANTS.items():
        if variant in ANCHORS or not by_seed(results, variant, "1/16"):
            continue
        cells, seeds = [], []
        for task in ("1/16", "1x"):
            em = [100 * d for d in differences(results, variant, task, "validation_accuracy")]
            cells += [paired(em), paired(differences(results, variant, task, "validation_answer_loss"))]
            seeds.append(" ".join(f"{d:+.2f}" for d in em))
        lines.append(
            f"| {label} | {' | '.join(cells)} | {'; '.join(seeds)} | {verdict(results, variant, split='validation')} |"
        )
    return lines


def planted_table(results: list[Result]) -> list[str]:
    lines = ["| variant | seeds | recall | residual | Δ recall | Δ residual | recall by seed | commits |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
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
            f"{'' if base else paired(differences(results, variant, 'planted', 'residual'))} | "
            f"{' '.join(format(r.values['recall'], '.3f') for r in done)} | "
            f"{', '.join(sorted({r.commit for r in done}))} |"
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
        "| budget | method (lr) | seeds | test exact match % | test answer loss | params | Δ test exact match vs new "
        "default |",
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


def curve_validation_table(results: list[Result], runs: list[Run]) -> list[str]:
    """The redrawn curve on the first 600 validation rows (which chose nothing here), with each row's commits;
    Δ = that method - new-default AdaLoRA, by seed, as in ``curve_table``."""
    lines = [
        "| budget | method (lr) | seeds | commits | validation exact match % | validation answer loss | "
        "Δ validation exact match vs new default |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, fraction in CURVE.items():
        mine = by_seed(results, "per-param", task)
        if not mine:
            continue
        done = [mine[s] for s in sorted(mine)]
        lines.append(
            f"| {task} | **adarank AdaLoRA, new default (per-param)** (2e-3) | {len(done)} | "
            f"{', '.join(sorted({r.commit for r in done}))} | "
            f"{mean_sd([r.values['validation_accuracy'] for r in done], 100, 2)} | "
            f"{mean_sd([r.values['validation_answer_loss'] for r in done])} | |"
        )
        for (method, lr), seeds in sorted(curve_rows(runs, fraction).items()):
            other = [seeds[s] for s in sorted(seeds)]
            diffs = [100 * (seeds[s].metrics["validation_accuracy"] - mine[s].values["validation_accuracy"])
                     for s in sorted(set(seeds) & set(mine))]  # fmt: skip
            lines.append(
                f"| {task} | {LABELS.get(method, method)} ({lr:g}) | {len(other)} | "
                f"{', '.join(sorted({r.commit for r in other}))} | "
                f"{mean_sd([r.metrics['validation_accuracy'] for r in other], 100, 2)} | "
                f"{mean_sd([r.metrics['validation_answer_loss'] for r in other])} | {paired(diffs)} |"
            )
    return lines


def against_curve(results: list[Result], runs: list[Run]) -> list[str]:
    """One line per budget and method of the budget study at its chosen lr: new-default AdaLoRA minus that
    method, paired by seed, on the validation rows first and then on the test rows the choice was made on."""
    chosen = best_lrs(runs, STUDIES["smollm2"].lr_grid)
    lines, beyond = [], {"validation": 0, "test": 0}
    for task, fraction in CURVE.items():
        mine = by_seed(results, "per-param", task)
        for (method, lr), seeds in sorted(curve_rows(runs, fraction).items()):
            if not mine or method == "adalora" or lr != chosen.get(method):
                continue
            common = sorted(set(seeds) & set(mine))
            parts = []
            for split in ("validation", "test"):
                key = f"{split}_accuracy"
                diffs = [100 * (mine[s].values[key] - seeds[s].metrics[key]) for s in common]
                beyond[split] += paired(diffs).endswith("*")
                ours = statistics.mean(100 * mine[s].values[key] for s in common)
                theirs = statistics.mean(100 * seeds[s].metrics[key] for s in common)
                parts.append(f"{paired(diffs)} ({ours:.2f}% vs {theirs:.2f}%)")
            commits = ", ".join(sorted({seeds[s].commit for s in common}))
            lines.append(f"- {task}, {LABELS.get(method, method)} at {lr:g}: validation **{parts[0]}**; test (the rows "
                         f"per_param was chosen on) {parts[1]}; that arm's runs at {commits}")  # fmt: skip
    if lines:
        counts = (
            f"{beyond['validation'] or 'none'} exclude 0 on the validation rows, {beyond['test'] or 'none'} on the test"
        )
        lines += [
            "",
            f"Of these {len(lines)} comparisons, {counts} rows. The budget study chose each of those arms' lr on its "
            "seed 0's validation answer loss (3 lrs), so on the validation rows their seed 0 is a chosen one too.",
        ]
    return lines


def chosen_on(results: list[Result], runs: list[Run]) -> list[str]:
    """Which rows chose what, and the new default's comparisons on the rows that chose nothing."""
    options = [v for v in VARIANTS if v not in ANCHORS and v not in REFERENCE]
    em = {split: [100 * d for d in differences(results, "per-param", "1/16", f"{split}_accuracy")]
          for split in ("validation", "test")}  # fmt: skip
    commits = ", ".join(sorted({r.commit for r in by_seed(results, "per-param", "1/16").values()}))
    text = [
        "## What was chosen, on which rows (read this first)",
        "",
        f"`budget.selection=per_param` was chosen as the new default among {len(options) + 1} variants (the defaults "
        f"and {len(options)} options: {', '.join(options)}) by the issue's rule applied to the SmolLM2 tables below, "
        "which read the **first 600 test rows**, and to the planted benchmark (commit 09c088e made it the default). "
        "The runs also hold the first 600 validation rows (`validation_accuracy` and `validation_answer_loss` in each "
        "metrics.json), which no decision here read. A figure on the test rows for per_param is measured on the rows "
        "it was chosen on, among six, and leans in its favour; the validation figure is the headline.",
        "",
        f"- per_param − the defaults before it, exact match at 1/16: validation **{paired(em['validation'])}** "
        f"(by seed {' '.join(f'{d:+.2f}' for d in em['validation'])}); test (the rows of the choice) "
        f"{paired(em['test'])} (by seed {' '.join(f'{d:+.2f}' for d in em['test'])}).",
    ]
    if runs:
        text += [
            "",
            "per_param AdaLoRA (lr 2e-3) − each method of reports/budget_curves.md at the lr that study chose, "
            "points of exact match, paired by seed, mean [95% t-interval] (* = excludes 0). The other arms are the "
            "budget study's runs (studies/runs/budget_curves/), at other commits than per_param's "
            f"(1/16: {commits}; every budget's in the validation table below); same seeds, data and rows:",
            "",
            *against_curve(results, runs),
        ]
    return [*text, ""]


def planted_note(results: list[Result], earlier: list[dict]) -> list[str]:
    """The defaults' planted recall here beside reports/planted_rank.md's (studies/runs/planted/minilm.jsonl):
    the same setting and selection (prefix) at other commits; the figures and commits of each."""
    mine = by_seed(results, "base", "planted")
    theirs = {int(r["seed"]): r for r in earlier if r.get("method") == "adalora"}
    if not mine or not theirs:
        return []

    def said(rows: list, recall, commit) -> str:
        by = ", ".join(f"{recall(r):.3f} at {commit(r)}" for r in rows)
        return f"{statistics.mean(recall(r) for r in rows):.3f} (by seed: {by})"

    common = sorted(set(mine) & set(theirs))
    differ = [s for s in common if abs(mine[s].values["recall"] - theirs[s]["recall"]) > 1e-9]
    residual = [s for s in common if abs(mine[s].values["residual"] - theirs[s]["residual"]) > 1e-9]
    here = said([mine[s] for s in sorted(mine)], lambda r: r.values["recall"], lambda r: r.commit)
    there = said([theirs[s] for s in sorted(theirs)], lambda r: float(r["recall"]), lambda r: r["commit"])
    return [
        "",
        f"The defaults' recall here, {here}, is `budget.selection=prefix` run by `studies/planted_rank.py --variant "
        f"base` (studies/runs/allocator/planted_base-seed*.jsonl). reports/planted_rank.md's adarank AdaLoRA "
        f"(studies/runs/planted/minilm.jsonl), {there}, is the same setting and the same selection, prefix "
        "(per_param entered the code at 45ff43f, after those runs): the code between the commits differs "
        "elsewhere (the allocator's new options, off; sharding helpers; planted_rank.py's --variant and --set; "
        f"dirty trees), and so do the figures: recall differs on seed {', '.join(map(str, differ)) or 'none'}, the "
        f"residual on seed {', '.join(map(str, residual)) or 'none'}. per_param's recall (table above) is at "
        f"{', '.join(sorted({r.commit for r in by_seed(results, 'per-param', 'planted').values()}))}.",
    ]


def count_text(results: list[Result], lr_runs: list[LrRun], folder: Path | None, raw: int | None) -> str:
    """How many archived runs this report reads and how they were counted."""
    smol = [r for r in results if r.task != "planted"]
    ablation = sum(r.variant in VARIANTS and r.task in ("1/16", "1x") for r in smol)
    curve = sum(r.variant == "per-param" and r.task not in ("1/16", "1x") for r in smol)
    diagnostic = sum(r.variant in DIAGNOSTIC and r.variant not in VARIANTS for r in smol)
    probe = sum(r.variant in PROBE for r in smol)
    planted = len(results) - len(smol)
    where = folder or Path("RUNS")
    unread = (
        f" ({raw - len(smol)} more such folders not read: a budget not in the study)" if raw and raw > len(smol) else ""
    )
    return (
        f"{len(results) + len(lr_runs)} archived runs, counted as the run folders with a metrics.json under "
        f"{where}/<variant>/<config>/<budget>/seed<k>/ and under {where}/lr/<method>/<config>/<budget>/seed<k>/, and "
        f"the lines of {where}/planted_<variant>-seed<k>.jsonl: {len(smol)} SmolLM2 runs{unread} ({ablation} of the "
        f"ablation, {len(VARIANTS)} variants x 2 budgets x 3 seeds; {curve} of per-param at 1/64 and 1/4 for the "
        f"redrawn curve; {diagnostic} of the warm start's diagnostic; {probe} of the lr probe), {planted} runs of "
        f"the planted benchmark and {len(lr_runs)} of the lr-range measure."
    )


def records_section(
    results: list[Result], lr_runs: list[LrRun], budget_runs: list[Run], folder: Path | None, curves: Path | None
) -> list[str]:
    """The archived records this report reads: each folder or file, its runs and commits, and the fields read."""
    where = folder or Path("RUNS")
    lines = [
        "## Records",
        "",
        "Fields read: metrics.json `test_accuracy` and `test_answer_loss` (the first 600 test rows), "
        "`validation_accuracy` and `validation_answer_loss` (the first 600 validation rows), `adapter_params_final`; "
        "train_log.json `grad_norm` (the largest logged, before clipping); sweep.json `commit`, `seed` and the "
        "overrides; the planted JSONL lines' `recall`, `residual` and `commit`; the lr-range runs' metrics.json "
        "`validation_accuracy` and `eval_accuracy` (test).",
        "",
        "| records | runs | commits |",
        "|---|---|---|",
    ]
    for variant in sorted({r.variant for r in results if r.task != "planted"}):
        mine = [r for r in results if r.variant == variant and r.task != "planted"]
        lines.append(f"| {where}/{variant}/ | {len(mine)} | {', '.join(sorted({r.commit for r in mine}))} |")
    for variant in sorted({r.variant for r in results if r.task == "planted"}):
        mine = [r for r in results if r.variant == variant and r.task == "planted"]
        lines.append(
            f"| {where}/planted_{variant}-seed*.jsonl | {len(mine)} | {', '.join(sorted({r.commit for r in mine}))} |"
        )
    for method in sorted({r.method for r in lr_runs}):
        mine = [r for r in lr_runs if r.method == method]
        lines.append(f"| {where}/lr/{method}/ | {len(mine)} | {', '.join(sorted({r.commit for r in mine}))} |")
    if budget_runs:
        read = {id(r) for f in CURVE.values() for seeds in curve_rows(budget_runs, f).values() for r in seeds.values()}
        for method in sorted({r.method for r in budget_runs if id(r) in read}):
            mine = [r for r in budget_runs if r.method == method and id(r) in read]
            lines.append(f"| {curves or 'the budget study'}/{method}/ (the redrawn curve's rows) | {len(mine)} | "
                         f"{', '.join(sorted({r.commit for r in mine}))} |")  # fmt: skip
    return [*lines, ""]


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
    results: list[Result],
    command: str,
    budget_runs: list[Run] | None = None,
    lr_runs: list[LrRun] | None = None,
    folder: Path | None = None,
    curves: Path | None = None,
    earlier_planted: list[dict] | None = None,
    raw: int | None = None,
) -> str:
    commits = sorted({r.commit for r in results})
    text = [
        "# Allocator options against the defaults before them (issue 18)",
        "",
        "Every option of the allocator run against the defaults of the time (`budget.selection=prefix`) "
        "with the same seeds: SmolLM2-135M-Instruct "
        "on Rotten Tomatoes as generation (the budget-curve task, adapters on all 210 linears, 80 steps, "
        "exact match and answer loss on the first 600 test rows in the tables that decided; the same on the "
        "first 600 validation rows beside them) at a final budget of 1/16 of LoRA r=1's "
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
        count_text(results, lr_runs or [], folder, raw),
        "",
        f"Commits of the SmolLM2 and planted runs: {', '.join(commits) if commits else '-'} (by folder under Records).",
        "",
        *(chosen_on(results, budget_runs or []) if by_seed(results, "per-param", "1/16") else []),
    ]
    for task in ("1/16", "1x"):
        text += [f"## SmolLM2, final budget {task} of LoRA r=1", "", *task_table(results, task), ""]
    text += ["## The known-answer benchmark (MiniLM, planted ranks)", "", *planted_table(results),
             *planted_note(results, earlier_planted or []), ""]  # fmt: skip
    text += ["## Decisions (the issue's rule, applied to the tables: the test rows)", ""]
    text += [f"- {VARIANTS[v]}: {verdict(results, v)}" for v in VARIANTS if v != "base"]
    if any("validation_accuracy" in r.values for r in results):
        text += ["", "## The same options on the validation rows (no decision read them)", "",
                 "Δ = variant − its reference, paired by seed, on the first 600 validation rows; the last column "
                 "applies the issue's rule with these in place of the test rows (the planted benchmark as above).",
                 "", *validation_table(results)]  # fmt: skip
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
                 "the methods of reports/budget_curves.md at 2e-3 and at the lr each chose (runs of that study, at "
                 "the commits given; same seeds, data and rows). Δ = that method − new-default AdaLoRA, by seed "
                 "(negative: the new default ahead). First on the validation rows, which chose nothing here:", "",
                 *curve_validation_table(results, budget_runs), "",
                 "Then on the test rows, the rows per_param was chosen on (its figures lean in its favour):", "",
                 *curve_table(results, budget_runs)]  # fmt: skip
    text += ["", *records_section(results, lr_runs or [], budget_runs or [], folder, curves)]
    return "\n".join(text) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, default=Path("reports/allocator.md"))
    parser.add_argument(
        "--curves", type=Path, default=Path("studies/runs/budget_curves"), help="the budget study's runs"
    )
    parser.add_argument(
        "--planted", type=Path, default=Path("studies/runs/planted/minilm.jsonl"),
        help="reports/planted_rank.md's runs, whose AdaLoRA recall is set beside the defaults' here",
    )  # fmt: skip
    args = parser.parse_args(argv)
    results = load(args.runs)
    earlier = (
        [json.loads(line) for line in args.planted.read_text().splitlines() if line.strip()]
        if args.planted.is_file()
        else []
    )
    raw = len(list(args.runs.glob("*/*/*/seed*/metrics.json")))
    budget_runs = load_runs(args.curves, STUDIES["smollm2"]) if args.curves.is_dir() else []
    lr_runs = load_lr(args.runs / "lr") if (args.runs / "lr").is_dir() else []
    command = f"python studies/allocator_report.py {args.runs} --out {args.out}"
    write_report(args.out, report(results, command, budget_runs, lr_runs, args.runs, args.curves, earlier, raw))
    print(
        f"wrote {args.out} ({len(results) + len(lr_runs)} runs: {len(results)} SmolLM2 and planted, "
        f"{len(lr_runs)} lr-range)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
