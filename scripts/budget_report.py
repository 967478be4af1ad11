"""reports/budget_curves.md from the runs of scripts/study_budget.sh (issue 16, part 1).

    python scripts/budget_report.py reports/budget_curves --out reports/budget_curves.md
    python scripts/budget_report.py runs/budget --best-lr adalora     # prints the chosen lr

Reads RUNS/<method>/<config>/<budget>/seed<k>/{sweep.json, metrics.json}. A run's budget fraction is
the nearest of 1/64, 1/16, 1/4 and 1 to its final adapter parameters / 305,280 (LoRA r=1 on all 210
modules), on a log scale. A method's learning rate is the one with the lowest mean validation answer
loss over the budgets where its whole seed-0 grid finished; only runs at that lr enter the curves.
Differences to adarank AdaLoRA are paired by seed: mean and 95% t-interval over the seeds both
have (n = 2 or 3: wide by design; an interval that excludes 0 is a difference beyond seed noise).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

LORA_R1 = 305_280  # LoRA r=1 on SmolLM2-135M's 210 linears: 30 x (q, o 1152 + k, v 768 + gate, up, down 2112)
FRACTIONS = {"1/64": 1 / 64, "1/16": 1 / 16, "1/4": 1 / 4, "1": 1.0}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}  # two-sided 95% t quantiles by degrees of freedom
LABELS = {
    "adalora": "adarank AdaLoRA",
    "vo-top": "LoRA, v+o of the top layers",
    "v-spread": "LoRA, v of layers spread over depth",
    "lora": "LoRA r=1 on all 210",
    "peft-adalora": "PEFT AdaLoRA",
}


@dataclass(frozen=True)
class Run:
    method: str
    budget: str  # the overrides without the learning rate
    lr: float
    seed: int
    metrics: dict
    commit: str

    @property
    def params(self) -> int:
        return int(self.metrics["adapter_params_final"])

    @property
    def fraction(self) -> str:
        ratio = max(self.params, 1) / LORA_R1
        return min(FRACTIONS, key=lambda f: abs(math.log(ratio / FRACTIONS[f])))


def load_runs(folder: Path) -> list[Run]:
    runs = []
    for marker in sorted(folder.glob("*/*/*/seed*/metrics.json")):
        point = json.loads((marker.parent / "sweep.json").read_text())
        lr = re.search(r"train\.learning_rate=(\S+)", point["budget"])
        budget = re.sub(r"\s*train\.learning_rate=\S+", "", point["budget"]).strip()
        method = marker.relative_to(folder).parts[0]
        metrics = json.loads(marker.read_text())
        runs.append(Run(method, budget, float(lr.group(1)) if lr else math.nan, int(point["seed"]), metrics,
                        point.get("commit", "not recorded")))  # fmt: skip
    return runs


def best_lrs(runs: list[Run]) -> dict[str, float]:
    """Per method: the lr with the lowest mean seed-0 validation answer loss over the budgets where
    every lr of its grid finished (ties: the smaller lr)."""
    out = {}
    for method in sorted({r.method for r in runs}):
        grid = [r for r in runs if r.method == method and r.seed == 0]
        lrs = sorted({r.lr for r in grid})
        budgets = [b for b in {r.budget for r in grid} if {r.lr for r in grid if r.budget == b} == set(lrs)]
        if len(lrs) < 2 or not budgets:
            continue
        chosen = [r for r in grid if r.budget in budgets]
        loss = {lr: statistics.mean(r.metrics["validation_answer_loss"] for r in chosen if r.lr == lr) for lr in lrs}
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
    """(method, fraction) -> seed -> run, at the method's chosen lr."""
    out: dict[tuple[str, str], dict[int, Run]] = {}
    for run in runs:
        if run.method in lrs and run.lr == lrs[run.method]:
            out.setdefault((run.method, run.fraction), {})[run.seed] = run
    return out


def table(points: dict[tuple[str, str], dict[int, Run]]) -> list[str]:
    lines = [
        "| budget | method | seeds | adapter params | exact match % | answer loss | Δ exact match vs AdaLoRA (points) "
        "| Δ answer loss vs AdaLoRA |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fraction in FRACTIONS:
        base = points.get(("adalora", fraction), {})
        for method in LABELS:
            seeds = points.get((method, fraction))
            if not seeds:
                continue
            done = [seeds[s] for s in sorted(seeds)]
            common = sorted(set(seeds) & set(base)) if method != "adalora" else []
            d_em = [100 * (seeds[s].metrics["test_accuracy"] - base[s].metrics["test_accuracy"]) for s in common]
            d_loss = [seeds[s].metrics["test_answer_loss"] - base[s].metrics["test_answer_loss"] for s in common]
            lines.append(
                f"| {fraction} | {LABELS[method]} | {len(done)} | {statistics.mean(r.params for r in done):,.0f} | "
                f"{mean_sd([r.metrics['test_accuracy'] for r in done], 100, 2)} | "
                f"{mean_sd([r.metrics['test_answer_loss'] for r in done])} | "
                f"{paired(d_em) if method != 'adalora' else ''} | {paired(d_loss) if method != 'adalora' else ''} |"
            )
    return lines


def plot(points: dict[tuple[str, str], dict[int, Run]], floor: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    panels = (
        ("test_accuracy", 100, "exact match on test (%)", "eval_accuracy_before"),
        ("test_answer_loss", 1, "answer-token loss on test (lower is better)", "test_answer_loss_before"),
    )
    for ax, (key, scale, title, floor_key) in zip(axes, panels, strict=True):
        for method, label in LABELS.items():
            xs, ys, errs = [], [], []
            for fraction in FRACTIONS:
                seeds = points.get((method, fraction))
                if not seeds:
                    continue
                values = [scale * r.metrics[key] for r in seeds.values()]
                xs.append(statistics.mean(r.params for r in seeds.values()))
                ys.append(statistics.mean(values))
                errs.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label)
        if floor_key in floor:
            ax.axhline(scale * floor[floor_key], color="grey", linestyle="--", label="untrained base (floor)")
        ax.axvline(LORA_R1, color="black", linewidth=0.6, linestyle=":")
        ax.set_xscale("log")
        ax.set_xlabel("final adapter parameters (log scale; dotted: LoRA r=1 on all 210 modules)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("SmolLM2-135M-Instruct, Rotten Tomatoes as generation: quality vs adapter size "
                 "(mean ± sd over seeds, each method at its chosen lr)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(runs: list[Run], out: Path) -> str:
    lrs = best_lrs(runs)
    points = curves(runs, lrs)
    floor = next((r.metrics for r in runs if "eval_accuracy_before" in r.metrics), {})
    figure = out.with_name(out.stem + ".png")
    plot(points, floor, figure)
    grid = ["| method | lr | budget | validation answer loss | validation exact match % |", "|---|---|---|---|---|"]
    for run in sorted((r for r in runs if r.seed == 0), key=lambda r: (r.method, r.fraction, r.lr)):
        loss, accuracy = run.metrics["validation_answer_loss"], 100 * run.metrics["validation_accuracy"]
        grid.append(f"| {run.method} | {run.lr:g} | {run.fraction} ({run.params:,}) | {loss:.3f} | {accuracy:.2f} |")
    commits = sorted({r.commit for r in runs})
    floor_text = (
        f"untrained base: exact match {100 * floor['eval_accuracy_before']:.2f}%, answer loss "
        f"{floor['test_answer_loss_before']:.3f}"
        if floor
        else "untrained base: not measured yet"
    )
    return "\n".join(
        [
            "# Budget curves: SmolLM2-135M-Instruct on Rotten Tomatoes as generation",
            "",
            "Written by `python scripts/budget_report.py reports/budget_curves --out reports/budget_curves.md`",
            "from the runs of `OMP_NUM_THREADS=2 scripts/study_budget.sh` (archived in reports/budget_curves/).",
            "Setup, methods and protocol: the header of scripts/study_budget.sh. Exact match and answer loss on",
            "the first 600 test rows.",
            f"Runs: {len(runs)}; commits: {', '.join(commits)}.",
            "",
            f"![quality vs adapter parameters]({figure.name})",
            "",
            f"*Figure: left, exact match; right, answer-token loss; x = final adapter parameters; {floor_text}.*",
            "",
            "## Chosen learning rates",
            "",
            ", ".join(f"{LABELS.get(m, m)}: {lr:g}" for m, lr in lrs.items()) or "none yet (grids unfinished)",
            "",
            "## Results at the chosen learning rates",
            "",
            "Δ = method − adarank AdaLoRA, paired by seed, mean [95% t-interval]; * = the interval excludes 0.",
            "",
            *table(points),
            "",
            "## Every seed-0 run (the learning-rate grid)",
            "",
            *grid,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, default=Path("reports/budget_curves.md"))
    parser.add_argument("--best-lr", metavar="METHOD", help="print METHOD's chosen learning rate and exit")
    args = parser.parse_args(argv)
    runs = load_runs(args.runs)
    if args.best_lr:
        lrs = best_lrs(runs)
        if args.best_lr not in lrs:
            parser.error(f"no finished lr grid for {args.best_lr} under {args.runs}")
        print(f"{lrs[args.best_lr]:g}")
        return 0
    text = report(runs, args.out)
    args.out.with_suffix(".md.tmp").write_text(text)
    args.out.with_suffix(".md.tmp").replace(args.out)
    print(f"wrote {args.out} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
