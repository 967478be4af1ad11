"""The budget-curve reports from the runs of studies/study_budget.sh (issue 16, part 1).

    python studies/budget_report.py studies/runs/budget_curves --out reports/budget_curves.md
    python studies/budget_report.py studies/runs/minilm_curves --study minilm --out reports/minilm_curves.md
    python studies/budget_report.py runs/budget --best-lr adalora     # prints the chosen lr

Reads RUNS/<method>/<config>/<budget>/seed<k>/{sweep.json, metrics.json}. A run's budget fraction is
the nearest of the study's fractions (SmolLM2: 1/64, 1/16, 1/4, 1; MiniLM: 1/32, 1/8, 1/2, 1) to its
final adapter parameters / LoRA r=1's on all the study's modules, on a log scale (head-only runs:
"0"). A method's learning rate is the one with the lowest mean validation answer loss (generation;
else the highest validation accuracy) over the budgets where its whole seed-0 grid finished, or its
one lr when the study fixed it; only runs at that lr enter the curves.
The study's seed phase runs seed 0 again at the chosen lr with seeds 1 and 2 (one commit and one
thread count for all three); where both exist the curve takes that run, and the grid's run of the same
configuration and seed is compared with it ("Seed 0 run twice"). Seed-phase runs are told apart by
their lr as the study's `best` prints it (0.008, where the grid writes 8e-3).
Differences to adarank AdaLoRA are paired by seed: mean and 95% t-interval over the seeds both
have (n = 2 or 3: wide by design; an interval that excludes 0 is a difference beyond seed noise).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Study:
    title: str
    script: str
    rows: str
    planned: int  # runs in the study script
    lora_r1: int  # LoRA r=1 parameters on all the study's modules
    fractions: dict[str, float]
    primary: tuple[str, str]  # (metric key, panel title) of the main measure; the loss panel when present
    lr_grid: tuple[float, ...] = ()  # the study script's grid: an lr is chosen only once all of it has run
    notes: str = ""  # what the report says of the study's methods beside the figures
    check_lr: float = 0.0  # the study's lr check below one rank per module (its step 3); 0: none
    fell_behind: float = 0.0  # points of test exact match below a point's best seed that list a run; 0: no list
    records: bool = False  # say how the runs were counted and list the archive's folders and their commits


STUDIES = {
    "smollm2": Study("SmolLM2-135M-Instruct on Rotten Tomatoes as generation", "studies/study_budget.sh",
                     "Exact match and answer loss on the first 600 validation and test rows.", 72,
                     305_280,  # 30 x (q, o 1152 + k, v 768 + gate, up, down 2112)
                     {"1/64": 1 / 64, "1/16": 1 / 16, "1/4": 1 / 4, "1": 1.0}, ("test_accuracy", "exact match"),
                     (5e-4, 2e-3, 8e-3),
                     "Where each method can go: PEFT's AdaLoRA sets its final budget as `target_r` triplets per "
                     "adapted module on average (`target_r` x 210 in all, shared out by its scores), so the least it "
                     "can express is `target_r` = 1, about LoRA r=1's parameter count: it appears at 1x only, at its "
                     "realized parameter count. LoRA at one rank on every module likewise needs r >= 1; below that, "
                     "LoRA runs on modules picked by hand (v+o of the top layers, v of layers spread over depth).",
                     2e-3, fell_behind=5.0, records=True),
    "minilm": Study("all-MiniLM-L6-v2 on Rotten Tomatoes as classification (the head is trained in every run)",
                    "studies/study_minilm_curve.sh", "Accuracy on the whole validation and test splits.", 33,
                    41_472,  # 6 x (query, key, value, attention output 768 + FFN in, out 1920)
                    {"1/32": 1 / 32, "1/8": 1 / 8, "1/2": 1 / 2, "1": 1.0}, ("test_accuracy", "accuracy"),
                    notes="**The 1/8 adarank AdaLoRA arm mixes two versions of the code.** Its seed 0 ran at 788771f, "
                    "before `budget.shrink` and the final phase's orthogonality penalty over live triplets only "
                    "(both added in ecf7e2a); its seeds 1 and 2 ran at e09554f and 32dbd44, after it (the commits "
                    "are the runs' sweep.json; the order is git's: `git merge-base --is-ancestor ecf7e2a <commit>`). "
                    "Every other AdaLoRA run of the curve ran after ecf7e2a. Read the arm's mean as mixed: seed 0 "
                    "(79.02% test) is not the same code as seeds 1-2 (77.92%, 78.26%), and no seed was rerun to "
                    "separate the two. The shrink itself leaves the trained ΔW unchanged (within 7.5e-9 in "
                    "tests/core/test_shrink.py); the live-only penalty moves a run slightly (6.6e-5 there), an "
                    "effect not measured on this arm. The LoRA and head-only arms mask nothing, so the change does "
                    "not touch them, though their runs at 788771f and 4d1c74c also predate it."),
}  # fmt: skip
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}  # two-sided 95% t quantiles by degrees of freedom
LABELS = {
    "adalora": "adarank AdaLoRA",
    "vo-top": "LoRA, v+o of the top layers",
    "v-spread": "LoRA, v of layers spread over depth",
    "lora": "LoRA r=1 on every module",
    "peft-adalora": "PEFT AdaLoRA",
    "value-top": "LoRA on value (layer 5 at 1/32, every layer from 1/8)",
    "qv-top": "LoRA on query + value (top 3 layers at 1/8, every layer at 1/2)",
    "head-only": "head only (linear probe)",
}


@dataclass(frozen=True)
class Run:
    method: str
    budget: str  # the overrides without the learning rate
    lr: float  # 0: the config's own (the study fixed it there)
    seed: int
    metrics: dict
    commit: str
    study: Study  # the study it belongs to: its fractions and LoRA r=1 size place the run on the curve
    losses: tuple[tuple[int, float], ...] = ()  # (step, training loss) as logged; empty when not archived
    max_grad_norm: float | None = None  # the largest logged gradient norm (before clipping); None: no log
    max_grad_step: int | None = None  # the step that logged it
    seed_phase: bool = False  # run by the study's seed phase at the chosen lr, not by its lr grid

    @property
    def params(self) -> int:
        return int(self.metrics["adapter_params_final"])

    @property
    def fraction(self) -> str:
        if self.params == 0:
            return "0"
        ratio = self.params / self.study.lora_r1
        return min(self.study.fractions, key=lambda f: abs(math.log(ratio / self.study.fractions[f])))


@functools.lru_cache(maxsize=4)
def _log_entries(log: Path) -> tuple[dict, ...]:
    """The entries of a run's train_log.json, read once for both readers below; none when absent."""
    return tuple(json.loads(log.read_text())) if log.exists() else ()


def training_losses(log: Path) -> tuple[tuple[int, float], ...]:
    """(step, training loss) of each training entry of a run's train_log.json; none when absent."""
    return tuple((int(e["step"]), float(e["loss"])) for e in _log_entries(log) if "loss" in e)


def largest_grad_norm(log: Path) -> float | None:
    """The largest gradient norm a run's train_log.json records (the Trainer logs it before clipping);
    None without a log or norms."""
    norms = [float(e["grad_norm"]) for e in _log_entries(log) if "grad_norm" in e]
    return max(norms) if norms else None


def largest_grad_norm_step(log: Path) -> int | None:
    """The step of the largest gradient norm a run's train_log.json records; None without one."""
    norms = [(float(e["grad_norm"]), int(e["step"])) for e in _log_entries(log) if "grad_norm" in e]
    return max(norms)[1] if norms else None


def loss_path(run: Run) -> str:
    """``lowest (at step) → last`` logged training loss, or "-" when the run's log was not archived."""
    if not run.losses:
        return "-"
    step, lowest = min(run.losses, key=lambda point: point[1])
    return f"{lowest:.3f} ({step}) → {run.losses[-1][1]:.3f}"


def load_runs(folder: Path, study: Study) -> list[Run]:
    runs = []
    for marker in sorted(folder.glob("*/*/*/seed*/metrics.json")):
        point = json.loads((marker.parent / "sweep.json").read_text())
        lr = re.search(r"train\.learning_rate=(\S+)", point["budget"])
        seed_phase = lr is not None and lr.group(1) == f"{float(lr.group(1)):g}"  # `best` prints 0.008, GRID 8e-3
        budget = re.sub(r"\s*train\.learning_rate=\S+", "", point["budget"]).strip()
        method = marker.relative_to(folder).parts[0]
        metrics = json.loads(marker.read_text())
        runs.append(Run(method, budget, float(lr.group(1)) if lr else 0.0, int(point["seed"]), metrics,
                        point.get("commit", "not recorded"), study,
                        training_losses(marker.parent / "train_log.json"), seed_phase=seed_phase,
                        max_grad_norm=largest_grad_norm(marker.parent / "train_log.json"),
                        max_grad_step=largest_grad_norm_step(marker.parent / "train_log.json")))  # fmt: skip
    return runs


def selection(run: Run) -> float:
    """Lower is better: the validation answer loss (generation), else minus the validation accuracy."""
    if "validation_answer_loss" in run.metrics:
        return float(run.metrics["validation_answer_loss"])
    return -float(run.metrics["validation_accuracy"])


def best_lrs(runs: list[Run], lr_grid: tuple[float, ...] = ()) -> dict[str, float]:
    """Per method: the lr with the lowest mean seed-0 validation answer loss over the budgets where
    every lr of its grid finished (ties: the smaller lr); none before every lr of ``lr_grid`` has run."""
    out = {}
    for method in sorted({r.method for r in runs}):
        grid = [r for r in runs if r.method == method and r.seed == 0 and not r.seed_phase]
        lrs = sorted({r.lr for r in grid})
        if lrs == [0.0]:  # no grid: the study fixed this method's lr in its config
            out[method] = 0.0
            continue
        if len(lrs) < 2 or not set(lr_grid) <= set(lrs):  # a grid not yet run: no choice to make
            continue
        budgets = [b for b in {r.budget for r in grid} if {r.lr for r in grid if r.budget == b} == set(lrs)]
        if not budgets:
            continue
        chosen = [r for r in grid if r.budget in budgets]
        loss = {lr: statistics.mean(selection(r) for r in chosen if r.lr == lr) for lr in lrs}
        out[method] = min(lrs, key=lambda lr: (loss[lr], lr))
    return out


def paired(diffs: list[float]) -> str:
    """mean [95% t-interval] of paired differences; the mean alone for one seed."""
    if len(diffs) < 2:
        return f"{diffs[0]:+.3f} (1 seed)" if diffs else "-"
    half = T95[len(diffs) - 1] * statistics.stdev(diffs) / math.sqrt(len(diffs))
    mean = statistics.mean(diffs)
    mark = " *" if abs(mean) > half else ""
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]{mark}"


def mean_sd(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    values = [v * scale for v in values]
    spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.{digits}f}{spread}"


def curves(runs: list[Run], lrs: dict[str, float]) -> dict[tuple[str, str], dict[int, Run]]:
    """(method, fraction) -> seed -> run, at the method's chosen lr; the seed phase's run where the grid
    ran the same seed too."""
    out: dict[tuple[str, str], dict[int, Run]] = {}
    for run in runs:
        if run.method in lrs and run.lr == lrs[run.method]:
            seeds = out.setdefault((run.method, run.fraction), {})
            if run.seed not in seeds or run.seed_phase:
                seeds[run.seed] = run
    return out


def check_section(runs: list[Run], study: Study) -> list[str]:
    """The study's lr check (every method below one rank per module at ``study.check_lr``), once a run
    beyond the grid's seed 0 has finished there."""
    methods = ("adalora", "vo-top", "v-spread")
    if not study.check_lr or not any(r.lr == study.check_lr and r.seed > 0 and r.method in methods for r in runs):
        return []
    points = curves([r for r in runs if r.method in methods], {m: study.check_lr for m in methods})
    return [
        f"## A check: every method at lr {study.check_lr:g} below one rank per module",
        "",
        f"Not the chosen lr. This repeats the comparison at {study.check_lr:g}, the grid's runner-up for",
        "AdaLoRA, to show whether the result above depends on the lr: seed 0 is the grid's run (older commits),",
        "seeds 1 and 2 come from the study's step 3.",
        "",
        *table(points, study),
        "",
    ]


def reruns(runs: list[Run]) -> list[tuple[Run, Run]]:
    """(grid run, seed-phase run) pairs of one method, budget, lr and seed: a configuration run twice,
    under different commits and thread counts."""
    grid = {(r.method, r.budget, r.lr, r.seed): r for r in runs if not r.seed_phase}
    return [(grid[key], r) for r in runs if r.seed_phase and (key := (r.method, r.budget, r.lr, r.seed)) in grid]


def rerun_section(pairs: list[tuple[Run, Run]], name: str) -> list[str]:
    """The "Seed 0 run twice" table: each pair's figures and their difference, and the mean |difference|."""
    if not pairs:
        return []
    lines = [
        "## Seed 0 run twice",
        "",
        "The seed phase runs seed 0 again at the chosen lr, so that the three seeds of a point share one",
        "commit and one thread count; the grid's runs were made over several commits, the early ones with 2",
        "threads. Same configuration, same seed, same data order: what differs is the code's summation order",
        "(changes meant to keep the figures) and the thread count. The difference is numerical noise that",
        "seed-to-seed spread already contains.",
        "",
        f"| method | budget (params) | lr | commits: grid → rerun | test {name} %: grid → rerun | "
        "test answer loss: grid → rerun |",
        "|---|---|---|---|---|---|",
    ]
    for grid, rerun in pairs:
        em = [100 * r.metrics["test_accuracy"] for r in (grid, rerun)]
        loss = [r.metrics.get("test_answer_loss") for r in (grid, rerun)]
        loss_text = "-" if None in loss else f"{loss[0]:.3f} → {loss[1]:.3f} ({loss[1] - loss[0]:+.3f})"
        lines.append(f"| {grid.method} | {grid.fraction} ({grid.params:,}) | {grid.lr:g} | {grid.commit} → "
                     f"{rerun.commit} | {em[0]:.2f} → {em[1]:.2f} ({em[1] - em[0]:+.2f}) | {loss_text} |")  # fmt: skip
    em_gaps = [100 * abs(b.metrics["test_accuracy"] - a.metrics["test_accuracy"]) for a, b in pairs]
    loss_gaps = [abs(b.metrics["test_answer_loss"] - a.metrics["test_answer_loss"]) for a, b in pairs
                 if "test_answer_loss" in a.metrics and "test_answer_loss" in b.metrics]  # fmt: skip
    summary = f"Mean |difference| over {len(pairs)} pairs: {statistics.mean(em_gaps):.2f} points of {name}"
    if loss_gaps:
        summary += f", {statistics.mean(loss_gaps):.3f} answer loss"
    return [*lines, "", summary + ".", ""]


def phase(run: Run) -> str:
    """Which step of the study ran it: the lr grid (seed 0), the seed phase at the chosen lr, or the lr check
    (seeds 1 and 2 at ``study.check_lr``, written as the grid writes lrs)."""
    if run.seed_phase:
        return "seed phase"
    return "lr grid" if run.seed == 0 else "lr check"


def count_text(runs: list[Run], folder: Path, study: Study) -> str:
    """How many runs the archive holds and how they were counted: one per metrics.json, by study step."""
    steps = {name: sum(phase(r) == name for r in runs) for name in ("lr grid", "seed phase", "lr check")}
    distinct = len({(r.method, r.budget, r.lr, r.seed) for r in runs})
    return (
        f"Counted as the run folders with a metrics.json under {folder}/ (RUNS/<method>/<config>/<budget>/"
        f"seed<k>/): {len(runs)} runs = {steps['lr grid']} of the lr grid (seed 0), {steps['seed phase']} of "
        f"the seed phase (seeds 0-2 at each method's chosen lr) and {steps['lr check']} of the lr check at "
        f"{study.check_lr:g} (seeds 1 and 2); {len(reruns(runs))} of the seed phase's seed-0 runs "
        f'repeat a grid run\'s configuration ("Seed 0 run twice" below), so {distinct} distinct configurations.'
    )


def records_section(runs: list[Run], folder: Path) -> list[str]:
    """The archived records this report reads: each method's folder, its run count and commits."""
    lines = [
        "## Records",
        "",
        "Each run folder holds sweep.json (the overrides, seed and the commit the run ran at), metrics.json",
        "(validation and test exact match as `validation_accuracy` / `test_accuracy`, answer loss as",
        "`validation_answer_loss` / `test_answer_loss`, `adapter_params_final`) and, where archived,",
        f"train_log.json (training loss and gradient norm at each logged step; {sum(not r.losses for r in runs)} "
        "runs have none).",
        "",
        "| folder | runs | commits |",
        "|---|---|---|",
    ]
    for method in sorted({r.method for r in runs}):
        mine = [r for r in runs if r.method == method]
        lines.append(f"| {folder}/{method}/ | {len(mine)} | {', '.join(sorted({r.commit for r in mine}))} |")
    return [*lines, ""]


def fell_behind_section(points: dict[tuple[str, str], dict[int, Run]], study: Study) -> list[str]:
    """The runs at the chosen lrs that ended more than ``study.fell_behind`` points of test exact match below
    their point's best seed, with their largest logged gradient norm, and the largest norms of all."""
    if not study.fell_behind:
        return []
    behind, norms = [], []
    order = list(study.fractions)
    for key in sorted(points, key=lambda k: (k[0], order.index(k[1]) if k[1] in order else -1)):
        seeds = points[key]
        best = max(100 * r.metrics["test_accuracy"] for r in seeds.values())
        for _, run in sorted(seeds.items()):
            gap = best - 100 * run.metrics["test_accuracy"]
            if run.max_grad_norm is not None:
                norms.append((run.max_grad_norm, run, gap))
            if gap > study.fell_behind:
                behind.append((run, gap))
    lines = [
        f"## Runs that fell behind at the chosen learning rates (more than {study.fell_behind:g} points below "
        "their budget's best seed)",
        "",
        "| method | budget | lr | seed | commit | validation exact match % | test exact match % | below the best seed "
        "(points, test) | largest logged grad norm (step) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run, gap in behind:
        norm = "-" if run.max_grad_norm is None else f"{run.max_grad_norm:.1f} ({run.max_grad_step})"
        lines.append(
            f"| {LABELS.get(run.method, run.method)} | {run.fraction} | {run.lr:g} | {run.seed} | {run.commit} | "
            f"{100 * run.metrics['validation_accuracy']:.2f} | {100 * run.metrics['test_accuracy']:.2f} | "
            f"{gap:.2f} | {norm} |"
        )
    top = sorted(norms, key=lambda item: item[0], reverse=True)[:3]
    logged = {(len(r.losses), r.losses[-1][0]) for _, r, _ in norms if r.losses}
    cadence = f" ({logged.pop()[0]} of {max(r.losses[-1][0] for _, r, _ in norms)} steps)" if len(logged) == 1 else ""
    largest = "; ".join(
        f"{norm:.1f} ({LABELS.get(run.method, run.method)}, budget {run.fraction}, seed {run.seed}, "
        f"{'fell behind' if gap > study.fell_behind else f'{gap:.2f} points below its best seed: did not fall behind'})"
        for norm, run, gap in top
    )
    spiked = [r for r, _ in behind if r.max_grad_norm is not None]
    most = max(spiked, key=lambda r: r.max_grad_norm) if spiked else None
    return [
        *lines,
        "",
        f"The gradient norm is logged at the logging steps only{cadence}, before clipping; a spike between two "
        "logged steps is not seen. "
        + (f"Of the runs that fell behind, the largest logged norm is {most.max_grad_norm:.1f} "
           f"({LABELS.get(most.method, most.method)}, budget {most.fraction}, seed {most.seed}). " if most else "")
        + f"The largest logged norms of all the runs at the chosen lrs: {largest}.",
        "",
    ]  # fmt: skip


def table(points: dict[tuple[str, str], dict[int, Run]], study: Study) -> list[str]:
    lines = [
        f"| budget | method | seeds | adapter params | {study.primary[1]} % | answer loss | Δ {study.primary[1]} vs "
        "AdaLoRA (points) | Δ answer loss vs AdaLoRA | largest grad norm, by seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for fraction in ["0", *study.fractions]:
        base = points.get(("adalora", fraction), {})
        for method in LABELS:
            seeds = points.get((method, fraction))
            if not seeds:
                continue
            done = [seeds[s] for s in sorted(seeds)]
            common = sorted(set(seeds) & set(base)) if method != "adalora" else []
            d_em = [100 * (seeds[s].metrics["test_accuracy"] - base[s].metrics["test_accuracy"]) for s in common]
            has_loss = all("test_answer_loss" in r.metrics for r in [*done, *base.values()])
            d_loss = [seeds[s].metrics["test_answer_loss"] - base[s].metrics["test_answer_loss"] for s in common
                      if has_loss]  # fmt: skip
            lines.append(
                f"| {fraction} | {LABELS[method]} | {len(done)} | {statistics.mean(r.params for r in done):,.0f} | "
                f"{mean_sd([r.metrics['test_accuracy'] for r in done], 100, 2)} | "
                f"{mean_sd([r.metrics['test_answer_loss'] for r in done]) if has_loss else '-'} | "
                f"{paired(d_em) if method != 'adalora' else ''} | {paired(d_loss) if method != 'adalora' else ''} | "
                f"{' / '.join('-' if r.max_grad_norm is None else f'{r.max_grad_norm:.1f}' for r in done)} |"
            )
    return lines


def plot(
    points: dict[tuple[str, str], dict[int, Run]], others: list[Run], floor: dict[str, float], path: Path, study: Study
) -> None:
    """The curves at the chosen lrs, and ``others`` (runs at an lr not chosen, or not chosen yet) as
    grey crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("test_accuracy", 100, f"{study.primary[1]} on test (%)", "eval_accuracy_before")]
    if any("test_answer_loss" in r.metrics for r in others) or any(
        "test_answer_loss" in r.metrics for seeds in points.values() for r in seeds.values()
    ):
        panels.append(("test_answer_loss", 1, "answer-token loss on test (log scale, lower is better)",
                       "test_answer_loss_before"))  # fmt: skip
    if "eval_accuracy_before" not in floor and ("head-only", "0") in points:  # classification: the linear probe
        probe = points[("head-only", "0")].values()
        floor = {"eval_accuracy_before": statistics.mean(r.metrics["test_accuracy"] for r in probe)}
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.6), squeeze=False)
    axes = axes[0]
    for ax, (key, scale, title, floor_key) in zip(axes, panels, strict=True):
        for method, label in LABELS.items():
            xs, ys, errs = [], [], []
            for fraction in study.fractions:
                seeds = points.get((method, fraction))
                if not seeds:
                    continue
                values = [scale * r.metrics[key] for r in seeds.values()]
                xs.append(statistics.mean(r.params for r in seeds.values()))
                ys.append(statistics.mean(values))
                errs.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label)
        if others:
            ax.plot([r.params for r in others], [scale * r.metrics[key] for r in others], "x", color="grey",
                    label="other runs (another lr, the grid's seed 0, or grid unfinished)")  # fmt: skip
        if floor_key in floor:
            what = "head only (linear probe)" if ("head-only", "0") in points else "untrained base"
            ax.axhline(scale * floor[floor_key], color="grey", linestyle="--", label=f"{what}: the floor")
        ax.axvline(study.lora_r1, color="black", linewidth=0.6, linestyle=":")
        ax.set_xscale("log")
        if key == "test_answer_loss":  # the floor is 30-40x the trained runs' loss: a linear axis flattens them
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator([0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10]))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlim(study.lora_r1 * min(study.fractions.values()) / 1.6, study.lora_r1 * 1.6)  # every budget
        ax.set_xlabel(f"final adapter parameters (log scale; dotted: LoRA r=1 on every module, {study.lora_r1:,})")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{study.title}:\nquality vs adapter size (mean ± sd over seeds, each method at its chosen lr)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(runs: list[Run], out: Path, command: str, study: Study, folder: Path | None = None) -> str:
    lrs = best_lrs(runs, study.lr_grid)
    points = curves(runs, lrs)
    floor = next((r.metrics for r in runs if "eval_accuracy_before" in r.metrics), {})
    figure = out.with_name(out.stem + ".png")
    chosen = {id(r) for seeds in points.values() for r in seeds.values()}
    plot(points, [r for r in runs if id(r) not in chosen and r.params], floor, figure, study)
    name = study.primary[1]
    grid = [
        f"| method | lr | run | budget (params) | validation answer loss | validation {name} % | test answer loss "
        f"| test {name} % | training loss: lowest (step) → last |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted((r for r in runs if r.seed == 0), key=lambda r: (r.method, r.fraction, r.lr, r.seed_phase))
    for run in order:
        m = run.metrics
        losses = ["-" if m.get(k) is None else f"{m[k]:.3f}" for k in ("validation_answer_loss", "test_answer_loss")]
        grid.append(
            f"| {run.method} | {run.lr or 'config'} | {'seeds' if run.seed_phase else 'grid'} | "
            f"{run.fraction} ({run.params:,}) | {losses[0]} | "
            f"{100 * m['validation_accuracy']:.2f} | {losses[1]} | {100 * m['test_accuracy']:.2f} | {loss_path(run)} |"
        )
    commits = sorted({r.commit for r in runs})
    if floor:
        floor_text = (f"untrained base: exact match {100 * floor['eval_accuracy_before']:.2f}%, answer loss "
                      f"{floor['test_answer_loss_before']:.3f}")  # fmt: skip
    elif ("head-only", "0") in points:
        floor_text = "dashed: the head trained alone (linear probe), mean over its seeds"
    else:
        floor_text = "floor not measured yet"
    return "\n".join([
        f"# Budget curves: {study.title}",
        "",
        f"Written by `{command}` from the runs of {study.script} (setup, methods and protocol in its",
        f"header). {study.rows} Commits: {', '.join(commits)}.",
        "",
        f"**Runs finished: {len(runs)} of the study's {study.planned}**"
        + (" (in progress: the tables hold what has finished; nothing is concluded from them yet)."
           if len(runs) < study.planned else "."),
        *(["", count_text(runs, folder, study)] if study.records and folder else []),
        "",
        f"![quality vs adapter parameters]({figure.name})",
        "",
        f"*Figure: {study.primary[1]} (left) and, for generation, answer-token loss (right) against the final "
        f"adapter parameters; {floor_text}.*",
        "",
        *([study.notes, ""] if study.notes else []),
        "## Chosen learning rates",
        "",
        ", ".join(f"{LABELS.get(m, m)}: {lr or 'fixed in the config'}" for m, lr in lrs.items()) or "none yet",
        "",
        "## Results at the chosen learning rates",
        "",
        "Δ = method − adarank AdaLoRA, paired by seed, mean [95% t-interval]; * = the interval excludes 0.",
        "",
        *table(points, study),
        "",
        "Largest grad norm: the largest gradient norm the run's train_log.json records (before clipping at",
        "1.0, the Trainer's default), one figure per seed in seed order. A spike of tens or hundreds is an",
        "unstable step; clipping bounds the update it makes, and not every run with one ends worse.",
        "",
        *fell_behind_section(points, study),
        *check_section(runs, study),
        "## Every seed-0 run",
        "",
        *grid,
        "",
        "Training loss: the mean over each logging window of the run's train_log.json, lowest and last. The",
        "windows are a few batches each, so the lowest is noisy and a last loss up to about twice it is common",
        "in runs that ended well. A last loss several times the lowest means the end of training undid what was",
        "learnt: for AdaLoRA, the last masking steps cut triplets the task needed and the final phase did not",
        "win it back. Run: the lr grid's run, or the seed phase's rerun of seed 0 at the chosen lr.",
        "",
        *rerun_section(reruns(runs), name),
        *(records_section(runs, folder) if study.records and folder else []),
    ])  # fmt: skip


def write_report(out: Path, text: str) -> None:
    """Write ``text`` to ``out`` whole or not at all (a temporary file beside it, then a rename)."""
    temporary = out.with_suffix(".md.tmp")
    temporary.write_text(text)
    temporary.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, default=Path("reports/budget_curves.md"))
    parser.add_argument("--study", choices=sorted(STUDIES), default="smollm2")
    parser.add_argument("--best-lr", metavar="METHOD", help="print METHOD's chosen learning rate and exit")
    args = parser.parse_args(argv)
    study = STUDIES[args.study]
    runs = load_runs(args.runs, study)
    if args.best_lr:
        lrs = best_lrs(runs, study.lr_grid)
        if args.best_lr not in lrs:
            parser.error(f"no finished lr grid for {args.best_lr} under {args.runs}")
        print(f"{lrs[args.best_lr]:g}")
        return 0
    command = f"python studies/budget_report.py {args.runs} --study {args.study} --out {args.out}"
    write_report(args.out, report(runs, args.out, command, study, args.runs))
    print(f"wrote {args.out} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
