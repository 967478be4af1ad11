"""The capacity study's tables (issue 39), from its archived runs (studies/runs/capacity/).

    python studies/capacity_report.py studies/runs/capacity --pilot     # the pilot's table, Markdown
    python studies/capacity_report.py studies/runs/capacity --small     # the small version's table
    python studies/capacity_report.py studies/runs/capacity --grid      # the facts study's lr grid
    python studies/capacity_report.py studies/runs/capacity --seeds --figures reports/capacity   # the study

Every figure is read from a run's metrics.json; each row names the commit its run recorded.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any

from budget_report import paired  # mean [95% t-interval] of paired differences, * beyond seed noise

FRACTIONS = {4614: "1/64", 38440: "1/8", 305490: "1x"}
PICKS = {4614: "v_proj of 6 layers spread over depth", 38440: "v_proj + o_proj of the top 20 layers",
         305490: "rank 1 on all 210 linears"}  # fmt: skip


def _commit(run: Path) -> str:
    sweep = run / "sweep.json"
    if sweep.exists():
        return str(json.loads(sweep.read_text()).get("commit", "?"))
    text = run / "commit.txt"
    return text.read_text().strip() if text.exists() else "?"


def _lr(run: Path) -> str:
    found = re.search(r"learning_rate-([0-9.]+e-[0-9]+|[0-9.]+)", run.parent.name)
    return found.group(1) if found else "?"


def pilot(root: Path) -> str:
    lines = [
        "| task | budget | LoRA arm | adapter params | lr | seed | validation answer loss | exact match % "
        "| validation perplexity | train s | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for metrics in sorted((root / "pilot").glob("*/*/*/seed*/metrics.json")):
        run = metrics.parent
        m = json.loads(metrics.read_text())
        task = run.parts[-4]
        params = int(m["adapter_params_final"])
        rows.append((task, params, _lr(run), run.name, m, _commit(run)))
    for task, params, lr, seed, m, commit in sorted(rows, key=lambda r: (r[0], r[1], r[2], r[3])):
        loss = m.get("validation_answer_loss")
        em = m.get("validation_accuracy")
        lines.append(
            f"| {task} | {FRACTIONS.get(params, '?')} | {PICKS.get(params, '?')} | {params:,} | {lr} | {seed[4:]} | "
            f"{'' if loss is None else f'{loss:.3f}'} | {'' if em is None else f'{100 * em:.2f}'} | "
            f"{m['validation_perplexity']:.2f} | {m['train_seconds']:.0f} | {commit} |"
        )
    return "\n".join(lines)


def small(root: Path) -> str:
    lines = [
        "| setting | arm | seeds | adapter params (final) | answer loss, by seed | mean | exact match %, by seed "
        "| commits |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting in sorted(p for p in (root / "small").iterdir() if p.is_dir() and p.name != "work"):
        for arm in sorted(p for p in setting.iterdir() if p.is_dir()):
            runs = sorted(arm.glob("seed*/metrics.json"))
            if not runs:
                continue
            ms = [json.loads(r.read_text()) for r in runs]
            losses = [m["test_answer_loss"] for m in ms]
            params = ", ".join(str(m["adapter_params_final"]) for m in ms)
            matches = " / ".join(f"{100 * m['test_accuracy']:.1f}" for m in ms)
            lines.append(
                f"| {setting.name} | {arm.name} | {len(ms)} | {params} | "
                f"{' / '.join(f'{x:.3f}' for x in losses)} | {statistics.mean(losses):.3f} | "
                f"{matches} | "
                f"{', '.join(sorted({_commit(r.parent) for r in runs}))} |"
            )
    return "\n".join(lines)


ARMS = {
    "adalora-8": "adarank AdaLoRA, 1/8",
    "vo_top-8": "LoRA r=1 on v_proj + o_proj of the top 20 layers, 1/8",
    "down18-8": "LoRA r=1 on down_proj of the top 18 layers, 1/8",
    "att-8": "allocate-then-train, 1/8 (the search's ranks, trained afresh)",
    "search-8": "(its search: adarank AdaLoRA, 40 steps)",
    "lora_r1-1": "uniform LoRA r=1, 1x",
    "peft_adalora-1": "PEFT AdaLoRA, 1x",
    "peft_eva-1": "PEFT EVA (r=1, rho 2), 1x",
}


def grid(root: Path) -> str:
    """Per arm and lr: answer loss and exact match on the selection draw's trained facts (seed 0); the best
    lr of each arm in bold, and whether it sits at the grid's edge (then the grid is extended there)."""
    lines = [
        "| arm | lr | answer loss | exact match % | adapter params (final) | train s | commit |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in ARMS.items():
        runs = sorted((root / "grid" / "facts" / name).glob("*/*/seed0/metrics.json"))
        found = {}
        for metrics in runs:
            found[_lr(metrics.parent)] = (json.loads(metrics.read_text()), _commit(metrics.parent))
        if not found:
            continue
        best = min(found, key=lambda lr: found[lr][0]["validation_answer_loss"])
        for lr in sorted(found, key=float):
            m, commit = found[lr]
            loss = f"{m['validation_answer_loss']:.3f}"
            edge = " (edge)" if lr == best and lr in (min(found, key=float), max(found, key=float)) else ""
            loss = f"**{loss}**{edge}" if lr == best and name != "search-8" else loss
            lines.append(
                f"| {label} | {lr} | {loss} | {100 * m['validation_accuracy']:.2f} | {m['adapter_params_final']:,} "
                f"| {m['train_seconds']:.0f} | {commit} |"
            )
    return "\n".join(lines)


BASE_GRID = ("5e-4", "2e-3", "8e-3", "3.2e-2")


def grid_losses(root: Path, arm: str) -> dict[str, float]:
    """lr -> answer loss of ``arm``'s finished grid runs (seed 0, selection draw)."""
    found = {}
    for metrics in (root / "grid" / "facts" / arm).glob("*/*/seed0/metrics.json"):
        found[_lr(metrics.parent)] = float(json.loads(metrics.read_text())["validation_answer_loss"])
    return found


def best_lr(root: Path, arm: str) -> str | None:
    """The arm's best lr once its base grid is complete and the best is not at an edge of the lrs tried
    (the study's rule: an edge gets the grid extended on that side); None otherwise."""
    losses = grid_losses(root, arm)
    if not set(BASE_GRID) <= set(losses):
        return None
    best = min(losses, key=losses.__getitem__)
    tried = sorted(losses, key=float)
    return None if best in (tried[0], tried[-1]) else best


def next_lr(root: Path, arm: str) -> str | None:
    """The lr that extends ``arm``'s grid (4x beyond the edge its best sits at), or None when the base grid
    is incomplete or the best is inside."""
    losses = grid_losses(root, arm)
    if not set(BASE_GRID) <= set(losses):
        return None
    best = min(losses, key=losses.__getitem__)
    tried = sorted(losses, key=float)
    if best == tried[-1]:
        return f"{float(best) * 4:.3g}"
    if best == tried[0]:
        return f"{float(best) / 4:.3g}"
    return None


BUDGET_ARMS = {  # the reported points of studies/study_capacity.sh's seeds phase, by budget (adarank AdaLoRA first)
    "1/64 (4,614)": {"adalora-64": "adarank AdaLoRA", "vspread-64": "LoRA r=1 on v_proj of 6 layers",
                     "att-64": "allocate-then-train"},
    "1/8 (38,440)": {"adalora-8": "adarank AdaLoRA", "vo_top-8": "LoRA r=1 on v_proj + o_proj, top 20 layers",
                     "down18-8": "LoRA r=1 on down_proj, top 18 layers", "att-8": "allocate-then-train"},
    "1x (305,490)": {"adalora-1": "adarank AdaLoRA", "lora_r1-1": "uniform LoRA r=1",
                     "peft_adalora-1": "PEFT AdaLoRA", "peft_eva-1": "PEFT EVA", "att-1": "allocate-then-train"},
    "4x (1,221,960)": {"adalora-4x": "adarank AdaLoRA", "lora_r4-4x": "uniform LoRA r=4",
                       "peft_adalora-4x": "PEFT AdaLoRA", "peft_eva-4x": "PEFT EVA"},
}  # fmt: skip


def seed_runs(root: Path, name: str) -> dict[int, dict[str, Any]]:
    """seed -> {metrics, ranks, commit} of a reported point's finished runs (report draw)."""
    found = {}
    for metrics in sorted((root / "seeds" / "facts" / name).glob("*/*/seed*/metrics.json")):
        run = metrics.parent
        m = json.loads(metrics.read_text())
        allocation = run / "allocation.json"
        ranks = json.loads(allocation.read_text()) if allocation.exists() else m.get("ranks")
        found[int(run.name[4:])] = {"metrics": m, "ranks": ranks, "commit": _commit(run)}
    return found


def _spread(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    mean = statistics.mean(values) * scale
    return (
        f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"
        if len(values) > 1
        else f"{mean:.{digits}f}"
    )


def seeds(root: Path) -> str:
    """Per budget, every reported arm on the report draw: seeds, final adapter parameters, answer loss and
    exact match (mean ± sd over seeds), the answer-loss difference to adarank AdaLoRA and to the best
    alternative (the other arm with the lowest mean loss), paired by seed, and the training seconds (for
    allocate-then-train, plus its search's)."""
    lines = [
        "| budget | arm | seeds | adapter params (final, mean) | answer loss | exact match % | Δ loss vs adarank "
        "AdaLoRA | Δ loss vs best alternative | train s (mean) | commits |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for budget, arms in BUDGET_ARMS.items():
        runs = {name: seed_runs(root, name) for name in arms}
        losses = {n: {s: r["metrics"]["validation_answer_loss"] for s, r in rs.items()} for n, rs in runs.items()}
        reference = next(iter(arms))
        others = [n for n in arms if n != reference and losses[n]]
        best = min(others, key=lambda n: statistics.mean(losses[n].values()), default=None)
        for name, label in arms.items():
            if not runs[name]:
                lines.append(f"| {budget} | {label} | 0 | - | not yet run | - | - | - | - | - |")
                continue
            ms = [r["metrics"] for r in runs[name].values()]
            params = statistics.mean(m["adapter_params_final"] for m in ms)
            versus = []
            for other in (reference, best):
                if other is None or other == name:
                    versus.append("")
                    continue
                common = sorted(set(losses[name]) & set(losses[other]))
                versus.append(paired([losses[name][s] - losses[other][s] for s in common]) if common else "")
            mark = " (best alternative)" if name == best else ""
            seconds = f"{statistics.mean(m['train_seconds'] for m in ms):.0f}"
            if name.startswith("att-"):  # its cost includes the search that found its ranks
                search = [r["metrics"]["train_seconds"] for r in seed_runs(root, f"search-{name[4:]}").values()]
                seconds += f" + {statistics.mean(search):.0f} search" if search else " + search not archived"
            lines.append(
                f"| {budget} | {label}{mark} | {len(ms)} | {params:,.0f} "
                f"| {_spread(list(losses[name].values()))} | {_spread([m['validation_accuracy'] for m in ms], 100, 1)} "
                f"| {versus[0]} | {versus[1]} | {seconds} "
                f"| {', '.join(sorted({r['commit'] for r in runs[name].values()}))} |"
            )
    return "\n".join(lines)


def _grid(ranked: list[dict[str, int]]) -> list[str]:
    """Every layer (0 to the deepest named) x every weight type any seed names, in a block's order: PEFT's EVA
    and allocate-then-train list only the modules they kept, so a module no seed lists is rank 0, not missing."""
    seen = dict.fromkeys(module for ranks in ranked for module in ranks)
    parts = [re.match(r"^(.*?\.)(\d+)(\..+)$", module) for module in seen]
    if not all(parts):
        return list(seen)
    prefix = parts[0].group(1)  # type: ignore[union-attr]
    last = max(int(part.group(2)) for part in parts)  # type: ignore[union-attr]
    kinds = sorted({part.group(3) for part in parts}, key=_kind_order)  # type: ignore[union-attr]
    return [f"{prefix}{layer}{kind}" for layer in range(last + 1) for kind in kinds]


KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # a decoder block's order


def _kind_order(kind: str) -> tuple[int, str]:
    name = kind.rsplit(".", 1)[-1]
    return (KINDS.index(name) if name in KINDS else len(KINDS), kind)


def seeds_figures(root: Path, out: Path) -> list[Path]:
    """quality.png (answer loss against final adapter parameters, mean ± sd over seeds, each seed a dot)
    and one rank heatmap per adaptive arm and budget (mean final rank over seeds) into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adarank.reporting.report import plot_heatmap

    out.mkdir(parents=True, exist_ok=True)
    families: dict[str, list[tuple[float, list[float]]]] = {}
    written = []
    for budget, arms in BUDGET_ARMS.items():
        for name, label in arms.items():
            runs = seed_runs(root, name)
            if not runs:
                continue
            params = statistics.mean(r["metrics"]["adapter_params_final"] for r in runs.values())
            families.setdefault(label, []).append(
                (params, [r["metrics"]["validation_answer_loss"] for r in runs.values()])
            )
            ranked = [r["ranks"] for r in runs.values() if r["ranks"]]
            adaptive = name.split("-")[0] in ("adalora", "att", "peft_adalora", "peft_eva")
            if adaptive and ranked:
                modules = _grid(ranked)
                mean = {module: statistics.mean(r.get(module, 0) for r in ranked) for module in modules}
                path = out / f"ranks_{name}.png"
                plot_heatmap(mean, path, f"{label}, {budget} parameters: mean final rank over {len(ranked)} seed(s)")
                written.append(path)
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    for i, (label, points) in enumerate(sorted(families.items())):
        points.sort()
        xs = [p for p, _ in points]
        ax.errorbar(xs, [statistics.mean(v) for _, v in points],
                    yerr=[statistics.stdev(v) if len(v) > 1 else 0 for _, v in points],
                    fmt="-o", capsize=3, color=f"C{i}", label=label, markersize=5)  # fmt: skip
        for x, values in points:
            ax.scatter([x] * len(values), values, color=f"C{i}", s=8, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlim(3000, 2e6)  # every budget's place, whichever have runs
    ax.set_xticks([4614, 38440, 305490, 1221960], ["1/64\n4,614", "1/8\n38,440", "1x\n305,490", "4x\n1,221,960"])
    ax.minorticks_off()
    ax.set_xlabel("final adapter parameters (log scale; 1x = LoRA r=1 on all 210 linears)")
    ax.set_yscale("log")  # 1x's arms differ by hundredths of a nat, 1/64's by tenths: both readable
    ax.set_ylabel("answer-token loss on the trained facts (log scale)")
    ax.set_title("SmolLM2, 256 invented facts (report draw): mean ± sd over seeds, dots = seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")  # the low-budget, low-loss corner is empty
    fig.tight_layout()
    path = out / "quality.png"
    fig.savefig(path)
    plt.close(fig)
    return [path, *written]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--figures", type=Path, help="with --seeds: write the figure and rank heatmaps there")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--pilot", action="store_true")
    group.add_argument("--small", action="store_true")
    group.add_argument("--grid", action="store_true")
    group.add_argument("--seeds", action="store_true", help="the reported comparison (report draw, every seed)")
    group.add_argument("--best-lr", metavar="ARM", help="print the arm's chosen lr (nothing while undecided)")
    group.add_argument("--next-lr", metavar="ARM", help="print the lr that extends the arm's grid (nothing if none)")
    args = parser.parse_args(argv)
    if args.best_lr or args.next_lr:
        lr = best_lr(args.root, args.best_lr) if args.best_lr else next_lr(args.root, args.next_lr)
        if lr:
            print(lr)
        return 0
    if args.seeds:
        print(seeds(args.root))
        for path in seeds_figures(args.root, args.figures) if args.figures else []:
            print(f"wrote {path}")
        return 0
    print(pilot(args.root) if args.pilot else small(args.root) if args.small else grid(args.root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
