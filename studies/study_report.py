"""Turn the runs of studies/study_rt.sh (a studies/sweep.py folder) into the equal-budget report.

    python studies/study_report.py runs/study --out reports/quality_rt.md
    python studies/study_report.py runs/study --best-lr rt-minilm-adalora   # prints the chosen lr

Reads OUT/*/*/seed*/{sweep.json, metrics.json, allocation.json}. A run's grid point is its method
and its override string; the overrides are split into the budget (`budget.target_params`,
`budget.init_rank`), the learning rate and the rest (the ablation, if any). The learning rate of a
method is the one with the best validation accuracy at the largest budget, seed 0 (ties: the
smaller lr). Differences between methods are called significant when the 95% Welch confidence
interval of the difference in mean test accuracy excludes 0; with 3 seeds per method that needs a
large, consistent gap. Any `## Reading` section already in the report is kept.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from adarank.reporting.report import plot_heatmap, rank_grid, rank_label

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (standard table values)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)  # fmt: skip
BUDGET_KEYS = ("budget.target_params", "budget.init_rank")
LR_KEY = "train.learning_rate"
ALL_LINEAR = "rt-minilm-adalora-all"  # step 4 of studies/study_rt.sh: adapters on the FFN too, own budget
# Where and on what the archived runs ran: their sweep.json predates the commit field (studies/sweep.py's
# commit()), so this is what git shows of the archive (then reports/study_rt/), not a recorded field.
RUNS_RECORD = (
    "Records: studies/runs/study_rt/<method>/<point>/seed<k>/ (sweep.json, metrics.json, allocation.json). "
    "Ran 2026-11-23 on x86_64, 2 CPU cores, Python 3.11.7, torch 2.13.0+cpu, transformers 5.23.0, peft 0.21.2 "
    "(the PEFT runs' metrics.json record `peft_version` 0.21.2). Commit not recorded: the runs' sweep.json has "
    "no commit field (sweep.py added it later). Inferred from `git log --diff-filter=A` of the archive: archived "
    "in 8a634c0 (9 runs: the seed-0 lr grid at 3e-4, 1e-3, 3e-3 of adarank AdaLoRA, adarank LoRA and PEFT LoRA), "
    "c20a2d7 (13), 3ae9431 (2), 202f7ed (19) and 0cd85ff (1, all linears). The study's runner came in 89462a9, "
    "and from there to 0cd85ff the package (adarank/) changed only in 337a383 (the score-name check, no "
    "arithmetic), so every run trained adarank 0.1.0 as at 0cd85ff, up to uncommitted edits the records cannot "
    "show."
)


@dataclass(frozen=True)
class Run:
    method: str
    budget: str
    lr: float
    variant: str
    seed: int
    metrics: dict
    ranks: dict[str, int] | None


def method_name(folder_name: str) -> str:
    """`rt-minilm-adalora` -> `adarank AdaLoRA`, `peft-lora_rt-minilm-lora` -> `PEFT LoRA`,
    `rt-minilm-adalora-all` -> `adarank AdaLoRA (all linears)`."""
    runner, _, config = folder_name.rpartition("_")
    kind = "AdaLoRA" if "adalora" in config else "LoRA"
    where = " (all linears)" if config.endswith("-all") else ""
    return (f"PEFT {kind}" if runner.startswith("peft") else f"adarank {kind}") + where


def load_runs(out: Path) -> list[Run]:
    """Every finished run under ``out``."""
    runs = []
    for marker in sorted(out.glob("*/*/seed*/sweep.json")):
        metrics_file = marker.with_name("metrics.json")
        if not metrics_file.is_file():
            continue
        point = json.loads(marker.read_text())
        overrides = dict(item.split("=", 1) for item in point["budget"].split() if "=" in item)
        budget = " ".join(f"{k.split('.')[-1]}={overrides.pop(k)}" for k in BUDGET_KEYS if k in overrides)
        lr = float(overrides.pop(LR_KEY, "nan"))
        variant = " ".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "default"
        allocation = marker.with_name("allocation.json")
        ranks = json.loads(allocation.read_text()) if allocation.is_file() else None
        metrics = json.loads(metrics_file.read_text())
        runs.append(Run(point["method"], budget, lr, variant, int(point["seed"]), metrics, ranks))
    return runs


def budget_params(budget: str) -> int:
    """The final parameter budget in a budget label (`target_params=... init_rank=...`); 0 when none."""
    return int(dict(item.split("=", 1) for item in budget.split() if "=" in item).get("target_params", 0))


def best_lrs(runs: list[Run]) -> dict[str, float]:
    """Per method: the lr with the best validation accuracy, default variant, largest budget, seed 0."""
    top = max((budget_params(r.budget) for r in runs), default=0)
    grid = [r for r in runs if r.variant == "default" and r.seed == 0 and budget_params(r.budget) == top]
    best: dict[str, tuple[float, float]] = {}
    for run in sorted(grid, key=lambda r: r.lr):
        score = run.metrics["validation_accuracy"]
        if run.method not in best or score > best[run.method][0]:
            best[run.method] = (score, run.lr)
    return {method: lr for method, (_, lr) in best.items()}


def grid_note(runs: list[Run], lrs: dict[str, float], top: str) -> list[str]:
    """The lr grids are not the same size for every method: say which lrs each got, which lr a method with
    more points than the smallest grid would have had without its extra largest ones, and what that means."""
    grid: dict[str, dict[float, float]] = defaultdict(dict)
    for run in runs:
        if run.variant == "default" and run.seed == 0 and run.budget == top:
            grid[run.method][run.lr] = run.metrics["validation_accuracy"]
    if not grid or len({len(g) for g in grid.values()}) == 1:
        return []
    fewest = min(len(g) for g in grid.values())
    parts, without = [], []
    for method, scores in sorted(grid.items()):
        edge = ", the top of its grid" if math.isclose(lrs[method], max(scores)) else ""
        parts.append(f"{method_name(method)} {len(scores)} ({', '.join(f'{lr:g}' for lr in sorted(scores))}; "
                     f"chose {lrs[method]:g}{edge})")  # fmt: skip
        if len(scores) > fewest:
            kept = sorted(scores)[:fewest]
            best = max(kept, key=lambda lr: (scores[lr], -lr))
            extra = ", ".join(f"{lr:g}" for lr in sorted(scores)[fewest:])
            chosen = f"{100 * scores[lrs[method]]:.2f}% at its chosen {lrs[method]:g}"
            without.append(f"{method_name(method)} would have chosen {best:g} ({100 * scores[best]:.2f}% validation; "
                           f"{chosen}) without {extra}")  # fmt: skip
    return [
        "**The grids differ in size.** Learning rates tried (seed 0, largest budget): " + "; ".join(parts) + ". "
        + "; ".join(without) + ". adarank's two methods got a fourth point (1e-2) because they scored best at "
        "the old grid's top (3e-3; studies/study_rt.sh); PEFT's methods got no fourth point. What it means: the "
        "extra point could only raise adarank's validation choice, and PEFT AdaLoRA's top lr (1e-2) ties its "
        "chosen one, so its optimum is not bracketed either; this is not a matched-grid comparison. The "
        "asymmetry favours adarank, and adarank AdaLoRA still has the lowest mean at both budgets with every "
        "interval including 0; a fourth point for PEFT could only have raised PEFT's side. Read the result as "
        "no significant difference with adarank given the larger grid.",
        "",
    ]  # fmt: skip


def mean_std(values: list[float]) -> str:
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{spread}"


def welch(a: list[float], b: list[float]) -> tuple[float, float] | None:
    """Mean difference a - b and the half-width of its 95% Welch interval; None below 2 runs each."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.mean(a) - statistics.mean(b)
    if va + vb == 0:
        return diff, 0.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return diff, T975[min(max(int(df), 1), 30) - 1] * math.sqrt(va + vb)


def verdict(a: list[float], b: list[float]) -> str:
    result = welch(a, b)
    if result is None:
        return "too few runs"
    diff, half = result
    interval = f"{diff:+.2f} (95% CI {diff - half:+.2f} to {diff + half:+.2f})"
    return interval + (" significant" if abs(diff) > half else " no significant difference")


def accuracies(runs: list[Run]) -> list[float]:
    return [100 * r.metrics["eval_accuracy"] for r in runs]


def main_rows(runs: list[Run], lrs: dict[str, float]) -> dict[str, dict[str, list[Run]]]:
    """budget -> method -> runs at the method's chosen lr, default variant."""
    table: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.variant == "default" and run.method in lrs and math.isclose(run.lr, lrs[run.method]):
            table[run.budget][run.method].append(run)
    return table


def plot_accuracy(table: dict[str, dict[str, list[Run]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted(table, key=budget_params)
    methods = sorted({m for b in budgets for m in table[b]})
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    width = 0.8 / max(len(methods), 1)
    for j, method in enumerate(methods):
        for i, budget in enumerate(budgets):
            acc = accuracies(table[budget].get(method, []))
            if not acc:
                continue
            x = i + (j - (len(methods) - 1) / 2) * width
            std = statistics.stdev(acc) if len(acc) > 1 else 0.0
            ax.errorbar(x, statistics.mean(acc), yerr=std, fmt="o", markersize=7, capsize=4, color=f"C{j}",
                        label=method_name(method))  # fmt: skip
            ax.scatter([x + width / 4] * len(acc), acc, color=f"C{j}", s=10, marker="x", zorder=3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
    ax.set_xticks(range(len(budgets)), [f"{budget_params(b):,} adapter params" for b in budgets], fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Rotten Tomatoes, MiniLM: mean ± std over seeds (x: single runs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def mean_ranks(runs: list[Run]) -> dict[str, float]:
    with_ranks = [r.ranks for r in runs if r.ranks]
    return {name: statistics.mean(r[name] for r in with_ranks) for name in with_ranks[0]} if with_ranks else {}


def heatmap_section(runs: list[Run], budget: str, stem: str, out_dir: Path) -> list[str]:
    ranks = mean_ranks(runs)
    if not ranks:
        return []
    png = out_dir / f"{stem}.png"
    seeds = len([r for r in runs if r.ranks])
    what = f", {budget_params(budget):,} params" if budget_params(budget) else ""  # else the name says it
    plot_heatmap(ranks, png, f"{method_name(runs[0].method)}{what}: mean final rank over {seeds} seed(s)")
    grid = rank_grid(ranks)
    half = len(grid.layers) // 2
    lower = sum(sum(c or 0 for c in row) for row in grid.cells[:half])
    upper = sum(sum(c or 0 for c in row) for row in grid.cells[half:])
    types = {t: sum(row[j] or 0 for row in grid.cells) for j, t in enumerate(grid.types)}
    layers = {layer: sum(c or 0 for c in row) for layer, row in zip(grid.layers, grid.cells, strict=True)}
    return [
        f"![mean final rank]({png.name})",
        "",
        f"Mean over {seeds} seed(s), {budget}. Rank per layer: "
        + ", ".join(f"{layer}: {rank_label(round(v, 1))}" for layer, v in layers.items())
        + f". Lower half (layers {grid.layers[0]}-{grid.layers[half - 1]}): {rank_label(round(lower, 1))}; "
        f"upper half: {rank_label(round(upper, 1))}. Per weight type: "
        + ", ".join(f"{t}: {rank_label(round(v, 1))}" for t, v in types.items())
        + ".",
        "",
    ]


def all_linear_section(runs: list[Run], out_dir: Path) -> list[str]:
    """Accuracy and mean final ranks of the all-linear runs, with the FFN's share of the rank."""
    if not runs:
        return []
    final = statistics.mean(r.metrics["total_rank_final"] for r in runs)
    lines = [
        "## All linears: does the FFN get more rank?",
        "",
        f"adarank AdaLoRA (studies/configs/{ALL_LINEAR}.yaml) with adapters on all 36 linears: the 4 attention linears "
        "and the 2 FFN linears (intermediate.dense 384 -> 1536, output.dense 1536 -> 384) of each layer. The budget is "
        f"in triplets, as in the paper: rank 12 -> 8 per module on average ({final:.0f} triplets at the end), "
        f"lr {runs[0].lr:g}. Test accuracy {mean_std(accuracies(runs))}% over {len(runs)} seed(s); trainable "
        f"parameters {statistics.mean(r.metrics['trainable_params_initial'] for r in runs):,.0f} at start, "
        f"{statistics.mean(r.metrics['trainable_params_final'] for r in runs):,.0f} at the end.",
        "",
    ]
    ranks = mean_ranks(runs)
    if ranks:
        grid = rank_grid(ranks)
        ffn_cells = [row[j] for row in grid.cells for j, t in enumerate(grid.types) if not t.startswith("attention.")]
        ffn, total = sum(c or 0 for c in ffn_cells), sum(ranks.values())
        lines += [
            f"FFN adapters keep {rank_label(round(ffn, 1))} of the {rank_label(round(total, 1))} triplets "
            f"({100 * ffn / total:.0f}%; they are {len(ffn_cells)} of the {len(ranks)} modules, "
            f"{100 * len(ffn_cells) / len(ranks):.0f}%).",
            "",
        ]
    return lines + heatmap_section(runs, "all linears", "quality_rt_heatmap_all", out_dir)


def report(out: Path, target: Path) -> str:
    everything = load_runs(out)
    runs = [r for r in everything if r.method != ALL_LINEAR]
    lrs = best_lrs(runs)
    table = main_rows(runs, lrs)
    budgets = sorted(table, key=budget_params)
    lines = [
        "# Equal-budget quality: adarank vs PEFT, AdaLoRA vs LoRA (Rotten Tomatoes, MiniLM)",
        "",
        f"Generated by `python studies/study_report.py {out} --out {target}` from the runs of "
        "`studies/study_rt.sh` (the exact commands are in that file; it resumes where it stopped).",
        RUNS_RECORD,
        "",
        "Setup: MiniLM (all-MiniLM-L6-v2) on Rotten Tomatoes split by movie, adapters on the 24 attention "
        "linears (query, key, value, attention output), classifier head trained in full, 400 steps, batch 32, "
        "max length 64, linear decay after 5% warm-up, alpha 16. Budgets are final adapter parameters: the "
        "realized count of LoRA r=2 and r=8 on these modules counting λ (769 per rank per module; PEFT LoRA "
        "has no λ, so 768). AdaLoRA starts at 1.5x the final rank (3 -> 2, 12 -> 8), t_init 10%, t_final 30%, "
        "mask every 10 steps, orthogonality weight 0.1; adarank's λ learns at 10x the lr. PEFT's AdaLoRA is "
        "driven by `update_and_allocate` after every optimizer step (studies/peft_run.py).",
        "",
        "## Learning rate per method (validation accuracy, seed 0, largest budget)",
        "",
        "| method | lr | validation | test | chosen |",
        "|---|---|---|---|---|",
    ]
    top = budgets[-1] if budgets else ""
    for run in sorted(runs, key=lambda r: (r.method, r.lr)):
        if run.variant == "default" and run.seed == 0 and run.budget == top:
            chosen = "**yes**" if math.isclose(run.lr, lrs[run.method]) else ""
            lines.append(
                f"| {method_name(run.method)} | {run.lr:g} | {100 * run.metrics['validation_accuracy']:.2f}% | "
                f"{100 * run.metrics['eval_accuracy']:.2f}% | {chosen} |"
            )
    lines += ["", "The learning rate chosen at the largest budget is used at every budget.", ""]
    lines += grid_note(runs, lrs, top)
    header = ("| budget | method | lr | seeds | test accuracy % (mean ± std) | trainable at start | trainable at end | "
              "adapter params at end | vs adarank AdaLoRA (points) |")  # fmt: skip
    lines += ["## Test accuracy at equal final budget", "", header, "|---|---|---|---|---|---|---|---|---|"]
    for budget in budgets:
        ours = accuracies(table[budget].get("rt-minilm-adalora", []))
        for method, group in sorted(table[budget].items()):
            acc = accuracies(group)
            compare = "" if method == "rt-minilm-adalora" else verdict(acc, ours)
            lines.append(
                f"| {budget_params(budget):,} | {method_name(method)} | {lrs[method]:g} | {len(group)} | "
                f"{mean_std(acc)} | {statistics.mean(r.metrics['trainable_params_initial'] for r in group):,.0f} | "
                f"{statistics.mean(r.metrics['trainable_params_final'] for r in group):,.0f} | "
                f"{statistics.mean(r.metrics['adapter_params_final'] for r in group):,.0f} | {compare} |"
            )
    if table:
        plot_accuracy(table, target.parent / "quality_rt_accuracy.png")
        lines += ["", "![test accuracy](quality_rt_accuracy.png)", ""]
    ablations = defaultdict(list)
    ours_lr = lrs.get("rt-minilm-adalora", float("nan"))
    for run in runs:
        if run.method == "rt-minilm-adalora" and math.isclose(run.lr, ours_lr) and run.budget == top:
            ablations[run.variant].append(run)
    if len(ablations) > 1:
        base = accuracies(ablations["default"])
        header = "| variant | seeds | test accuracy % (mean ± std) | vs default (points) |"
        lines += ["## Ablations (adarank AdaLoRA, largest budget)", "", header, "|---|---|---|---|"]
        for variant, group in sorted(ablations.items(), key=lambda item: item[0] != "default"):
            compare = "" if variant == "default" else verdict(accuracies(group), base)
            lines.append(f"| {variant} | {len(group)} | {mean_std(accuracies(group))} | {compare} |")
        lines.append("")
    lines += ["## Where the rank goes", ""]
    for budget in budgets:
        group = table[budget].get("rt-minilm-adalora", [])
        lines += heatmap_section(group, budget, f"quality_rt_heatmap_{budget_params(budget)}", target.parent)
    lines += all_linear_section([r for r in everything if r.method == ALL_LINEAR], target.parent)
    lines += ["## Every run", "", "| method | budget | lr | variant | seed | validation | test | train s |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run in sorted(everything, key=lambda r: (r.method, budget_params(r.budget), r.lr, r.variant, r.seed)):
        m = run.metrics
        lines.append(
            f"| {method_name(run.method)} | {run.budget} | {run.lr:g} | {run.variant} | {run.seed} | "
            f"{100 * m['validation_accuracy']:.2f} | {100 * m['eval_accuracy']:.2f} | {m['train_seconds']:.0f} |"
        )
    lines += ["", "train s: training wall time. The runs were not isolated from other work on the machine (the "
              "first two ran side by side, 1 thread each): it is not a cost measurement (reports/cost.md is).",
              ""]  # fmt: skip
    text = "\n".join(lines)
    if target.is_file() and "\n## Reading" in target.read_text():
        text += "\n## Reading" + target.read_text().split("\n## Reading", 1)[1]
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, help="the sweep folder (studies/study_rt.sh writes runs/study)")
    parser.add_argument("--out", type=Path, default=Path("reports/quality_rt.md"))
    parser.add_argument("--best-lr", metavar="METHOD", help="print METHOD's chosen learning rate and exit")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        parser.error(f"{args.runs} is not a sweep folder; run studies/study_rt.sh first.")
    if args.best_lr:
        lrs = best_lrs(load_runs(args.runs))
        if args.best_lr not in lrs:
            parser.error(f"no finished learning-rate grid for {args.best_lr} in {args.runs}.")
        print(f"{lrs[args.best_lr]:g}")
        return 0
    text = report(args.runs, args.out)
    args.out.with_suffix(".md.tmp").write_text(text)
    args.out.with_suffix(".md.tmp").replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
