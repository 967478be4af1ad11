"""The capacity study's tables (issue 39), from its archived runs (studies/runs/capacity/).

    python studies/capacity_report.py studies/runs/capacity --pilot     # the pilot's table, Markdown
    python studies/capacity_report.py studies/runs/capacity --small     # the small version's table
    python studies/capacity_report.py studies/runs/capacity --grid      # the facts study's lr grid

Every figure is read from a run's metrics.json; each row names the commit its run recorded.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--pilot", action="store_true")
    group.add_argument("--small", action="store_true")
    group.add_argument("--grid", action="store_true")
    group.add_argument("--best-lr", metavar="ARM", help="print the arm's chosen lr (nothing while undecided)")
    group.add_argument("--next-lr", metavar="ARM", help="print the lr that extends the arm's grid (nothing if none)")
    args = parser.parse_args(argv)
    if args.best_lr or args.next_lr:
        lr = best_lr(args.root, args.best_lr) if args.best_lr else next_lr(args.root, args.next_lr)
        if lr:
            print(lr)
        return 0
    print(pilot(args.root) if args.pilot else small(args.root) if args.small else grid(args.root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
