"""Where the rank went, without wandb: a layers x weight-types grid, PNG plots, a static HTML report
and a terminal table. Pure functions of the allocation results (ranks, history, plan).

The grid follows the paper's central figure: one row per transformer layer, one column per weight
type in the model's own order (BERT: query, key, value, attention output, FFN in, FFN out; Llama:
q, k, v, o, gate, up, down).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adarank.schedule import BudgetPlan, budget_at

_LAYER = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class RankGrid:
    """Final (or current) rank per layer and weight type; ``cells[i][j]`` is None where layer i has no
    adapter of type j. Modules outside numbered layers go to ``other``."""

    layers: list[int]
    types: list[str]
    cells: list[list[float | None]]
    other: dict[str, float]


def split_name(name: str) -> tuple[int, str] | None:
    """(layer index, weight type) of a module name, e.g. `bert.encoder.layer.3.attention.self.query` ->
    (3, `attention.self.query`); None outside numbered layers."""
    match = _LAYER.search(name)
    return (int(match.group(1)), name[match.end() :]) if match else None


def rank_grid(ranks: Mapping[str, float]) -> RankGrid:
    """Arrange per-module ranks (or mean ranks over seeds) as layers x weight types (types in
    first-seen, i.e. model, order)."""
    layers: dict[int, dict[str, float]] = {}
    types: list[str] = []
    other = {}
    for name, rank in ranks.items():
        parts = split_name(name)
        if parts is None:
            other[name] = rank
            continue
        layer, kind = parts
        if kind not in types:
            types.append(kind)
        layers.setdefault(layer, {})[kind] = rank
    order = sorted(layers)
    return RankGrid(order, types, [[layers[i].get(t) for t in types] for i in order], other)


def rank_table(ranks: Mapping[str, int]) -> str:
    """The grid as an aligned text table with row and column sums (for the terminal)."""
    grid = rank_grid(ranks)
    header = ["layer", *grid.types, "sum"]
    rows = [
        [str(layer), *("-" if c is None else rank_label(c) for c in cells), rank_label(sum(c or 0 for c in cells))]
        for layer, cells in zip(grid.layers, grid.cells, strict=True)
    ]
    sums = [sum(row[j] or 0 for row in grid.cells) for j in range(len(grid.types))]
    rows.append(["sum", *map(rank_label, sums), rank_label(sum(sums))])
    rows += [[name, *[""] * len(grid.types), rank_label(rank)] for name, rank in grid.other.items()]
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def rank_label(value: float) -> str:
    """A rank as a cell label: `8` for whole ranks, `7.7` for a mean over seeds."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def plot_heatmap(ranks: Mapping[str, float], path: Path, title: str = "final rank per layer and weight type") -> Path:
    """PNG heatmap of the rank grid, every cell labelled with its rank (one decimal for means)."""
    plt = _pyplot()
    grid = rank_grid(ranks)
    values = [[float("nan") if c is None else c for c in row] for row in grid.cells]
    fig, ax = plt.subplots(figsize=(1.1 * len(grid.types) + 2.5, 0.32 * len(grid.layers) + 1.8), dpi=110)
    image = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower")
    for i, row in enumerate(grid.cells):
        for j, cell in enumerate(row):
            if cell is not None:
                ax.text(j, i, rank_label(cell), ha="center", va="center", color="white", fontsize=8)
    ax.set_xticks(range(len(grid.types)), [t.replace(".", ".\n") for t in grid.types], fontsize=7)
    ax.set_yticks(range(len(grid.layers)), [str(i) for i in grid.layers], fontsize=7)
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="rank")
    return _save(fig, plt, path)


def plot_budget_curve(plan: BudgetPlan, history: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """PNG of the planned b(t) and the budget the allocator realized at each masking step."""
    plt = _pyplot()
    steps = list(range(plan.total_steps + 1))
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    ax.plot(steps, [budget_at(t, plan) for t in steps], label="planned b(t)", color="#1f5fa8")
    ax.plot([e["step"] for e in history], [e["live"] for e in history], "o", ms=4, color="#d9480f",
            label="realized (after masking)")  # fmt: skip
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"budget ({plan.unit})")
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_rank_over_time(history: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """PNG of every module's allocated rank at each masking step (one thin line per module)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    steps = [e["step"] for e in history]
    for name in history[0]["ranks"] if history else []:
        ax.plot(steps, [e["ranks"][name] for e in history], lw=0.8, alpha=0.7)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("rank per module")
    ax.set_title("rank over time (one line per module)", fontsize=10)
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(
    run_dir: Path,
    plan: BudgetPlan,
    history: Sequence[Mapping[str, Any]],
    ranks: Mapping[str, int],
    metrics: Mapping[str, Any],
) -> Path:
    """Write the PNGs and ``report.html`` (relative image links: opens from disk, no server, no network)."""
    images = {
        "rank_heatmap.png": plot_heatmap(ranks, run_dir / "rank_heatmap.png"),
        "budget_curve.png": plot_budget_curve(plan, history, run_dir / "budget_curve.png"),
        "rank_over_time.png": plot_rank_over_time(history, run_dir / "rank_over_time.png"),
    }
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>" for k, v in metrics.items()
    )
    figures = "".join(
        f'<figure><img src="{name}" alt="{name}"><figcaption>{name}</figcaption></figure>' for name in images
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>adarank run report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}img{{max-width:100%}}
td,th{{text-align:left;padding:2px 8px}}pre{{background:#f4f4f4;padding:8px;overflow-x:auto}}</style></head>
<body><h1>adarank run report</h1>
<h2>Metrics</h2><table>{rows}</table>
<h2>Final rank (layers x weight types)</h2><pre>{html.escape(rank_table(ranks))}</pre>
{figures}
</body></html>
"""
    tmp = run_dir / "report.html.tmp"
    tmp.write_text(page)
    tmp.replace(run_dir / "report.html")
    return run_dir / "report.html"
