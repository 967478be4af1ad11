"""Where the rank went, without wandb: a layers x weight-types grid, PNG plots, a static HTML report
and a terminal table. Pure functions of the allocation results (ranks, history, plan).

The grid follows the paper's central figure: one row per transformer layer, one column per weight
type in the model's own order (BERT: query, key, value, attention output, FFN in, FFN out; Llama:
q, k, v, o, gate, up, down).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adarank.core.schedule import BudgetPlan, budget_at

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


def plot_heatmap(
    ranks: Mapping[str, float],
    path: Path,
    title: str = "final rank per layer and weight type",
    vmax: float | None = None,
    cmap: str = "viridis",
    vmin: float | None = 0,
) -> Path:
    """PNG heatmap of the rank grid, layer 0 at the top (as a model prints and `adarank inspect` shows),
    every cell labelled (one decimal for means; a sign for differences). ``vmin``/``vmax`` fix the
    colour scale, so several heatmaps compare cell by cell."""
    plt = _pyplot()
    grid = rank_grid(ranks)
    values = [[float("nan") if c is None else c for c in row] for row in grid.cells]
    fig, ax = plt.subplots(figsize=(1.1 * len(grid.types) + 2.5, 0.32 * len(grid.layers) + 1.8), dpi=110)
    image = ax.imshow(values, cmap=cmap, aspect="auto", origin="upper", vmin=vmin, vmax=vmax)
    signed = cmap != "viridis"
    for i, row in enumerate(grid.cells):
        for j, cell in enumerate(row):
            if cell is not None:
                label = (f"{cell:+g}" if cell else "0") if signed else rank_label(cell)
                red, green, blue, _ = image.cmap(image.norm(cell))
                ink = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"  # readable on the cell
                ax.text(j, i, label, ha="center", va="center", color=ink, fontsize=8)
    ax.set_xticks(range(len(grid.types)), [t.replace(".", ".\n") for t in grid.types], fontsize=7)
    ax.set_yticks(range(len(grid.layers)), [str(i) for i in grid.layers], fontsize=7)
    ax.set_ylabel("layer (0 = closest to the input)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="rank difference" if signed else "rank")
    return _save(fig, plt, path)


def _phases(ax: Any, plan: BudgetPlan) -> None:
    """Shade the warm-up and the final phase of ``plan`` on an axis whose x is the step."""
    if plan.adapts:
        ax.axvspan(0, plan.t_init, color="#999999", alpha=0.12, lw=0, label="warm-up at b(0)")
        ax.axvspan(
            plan.final_start, plan.total_steps, color="#2b8a3e", alpha=0.10, lw=0, label="final phase, masks fixed"
        )


def plot_budget_curve(plan: BudgetPlan, trace: Sequence[Mapping[str, int]], path: Path) -> Path:
    """PNG of the planned budget b(t) against the live rank at every step: the triplets with
    lambda * mask nonzero (counted in parameters when the budget is in parameters)."""
    plt = _pyplot()
    steps = list(range(plan.total_steps + 1))
    fig, ax = plt.subplots(figsize=(7.5, 3.4), dpi=110)
    _phases(ax, plan)
    ax.plot(steps, [budget_at(t, plan) for t in steps], label="planned budget b(t)", color="#1f5fa8", lw=1.6)
    live_key = "live_params" if plan.unit == "params" else "live_rank"
    if trace:
        ax.step([p["step"] for p in trace], [p[live_key] for p in trace], where="post", color="#d9480f", lw=1.2,
                label="live: triplets with λ·m ≠ 0")  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.set_xlim(0, plan.total_steps)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("parameters" if plan.unit == "params" else "triplets (total rank)")
    ax.set_title("rank budget: plan vs live", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, plt, path)


def plot_rank_over_time(
    history: Sequence[Mapping[str, Any]], initial: Mapping[str, int], total_steps: int, path: Path
) -> Path:
    """Small multiples of the allocated rank from step 0 (``initial``) through every masking step to
    the end, drawn as steps: one panel per layer, one labelled line per weight type; modules outside
    numbered layers share a last panel."""
    plt = _pyplot()
    names = list(initial)
    steps = [0, *(e["step"] for e in history), total_steps]
    series = {n: [initial[n], *(e["ranks"].get(n, 0) for e in history)] for n in names}
    for n in names:
        series[n].append(series[n][-1])
    panels: dict[str, list[tuple[str, str]]] = {}
    for name in names:
        parts = split_name(name)
        panel, kind = (f"layer {parts[0]}", parts[1]) if parts else ("other", name)
        panels.setdefault(panel, []).append((kind, name))
    kinds = list(dict.fromkeys(k for members in panels.values() for k, _ in members))
    colors = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(kinds)}
    columns = min(6, len(panels)) or 1
    rows = -(-len(panels) // columns) or 1
    legend_rows = -(-len(kinds) // 4)
    height = 1.6 * rows + 1.0 + 0.25 * legend_rows
    fig, axes = plt.subplots(rows, columns, figsize=(max(7.5, 2.3 * columns + 0.5), height), dpi=110,
                             sharex=True, sharey=True, squeeze=False)  # fmt: skip
    top = max((max(v) for v in series.values()), default=1)
    # lines of equal rank would hide each other: each weight type is drawn a hair above or below
    offset = {k: 0.07 * (i - (len(kinds) - 1) / 2) for i, k in enumerate(kinds)}
    for ax, (panel, members) in zip(axes.flat, panels.items(), strict=False):
        for kind, name in members:
            ax.step(steps, [r + offset[kind] for r in series[name]], where="post", color=colors[kind], lw=1.1)
        ax.set_title(panel, fontsize=8)
        ax.set_ylim(-0.3, top + 0.5)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colors[k], lw=2) for k in kinds]
    bottom = (0.25 * legend_rows + 0.25) / height
    fig.legend(handles, kinds, loc="lower center", ncol=min(len(kinds), 4), fontsize=7, frameon=False)
    fig.supxlabel("optimizer step", fontsize=8, y=bottom - 0.2 / height)
    fig.supylabel("allocated rank", fontsize=8)
    fig.suptitle("rank per module over training (init_rank at step 0; it changes at masking steps)", fontsize=9)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_loss_curve(log: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """PNG of the training loss per logging step, and the validation loss where the run evaluated
    during training."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.2), dpi=110)
    train = [(e["step"], e["loss"]) for e in log if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log if "eval_loss" in e and "step" in e]
    if train:
        ax.plot(*zip(*train, strict=True), color="#1f5fa8", lw=1.2, label="training loss (task loss + penalty)")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", color="#d9480f", ms=3, label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("loss over training", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, plt, path)


def plot_score_distribution(scores: Sequence[float], threshold: float | None, path: Path) -> Path:
    """PNG histogram of the triplet importance scores at the last masking step (log scale), with the
    threshold below which triplets were pruned."""
    import math

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.2), dpi=110)
    positive = [v for v in scores if v > 0]
    if positive:
        low, high = math.log10(min(positive)), math.log10(max(positive))
        edges = [10 ** (low + (high - low + 1e-9) * i / 40) for i in range(41)]
        ax.hist(positive, bins=edges, color="#1f5fa8")
        ax.set_xscale("log")
    if threshold is not None and math.isfinite(threshold) and threshold > 0:
        ax.axvline(threshold, color="#d9480f", lw=1.5, label=f"threshold {threshold:.3g}: lower scores pruned")
        ax.legend(fontsize=7)
    zero = len(scores) - len(positive)
    ax.set_xlabel(
        "triplet score (smoothed sensitivity x uncertainty), log scale" + (f"; {zero} at 0 not shown" if zero else "")
    )
    ax.set_ylabel("triplets")
    ax.set_title(f"importance scores of all {len(scores)} triplets at the last masking step", fontsize=10)
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


METRIC_NAMES = {
    "test_accuracy": "test accuracy", "validation_accuracy": "validation accuracy",
    "test_macro_f1": "test macro-F1", "validation_macro_f1": "validation macro-F1",
    "eval_accuracy_before": "test accuracy before training", "test_answer_loss": "test answer loss",
    "validation_answer_loss": "validation answer loss", "test_answer_loss_before": "test answer loss before training",
    "validation_loss": "validation loss", "test_loss": "test loss", "validation_perplexity": "validation perplexity",
    "test_perplexity": "test perplexity", "validation_loss_before": "validation loss before training",
    "validation_perplexity_before": "validation perplexity before training",
    "trainable_params_initial": "trainable parameters at the start",
    "trainable_params_final": "live trainable parameters at the end",
    "adapter_params_final": "adapter parameters at the end",
    "total_rank_final": "total rank at the end", "target_total_rank": "target total rank", "budget_unit": "budget unit",
    "target_params": "target parameters", "train_seconds": "training time (s)", "steps": "optimizer steps",
    "train_loss": "mean training loss", "test_examples": "test examples", "world_size": "processes",
    "test_loss_before": "test loss before training", "truncated_prompt_rows": "rows whose prompt lost its start",
    "cut_response_rows": "rows with response tokens cut",
}  # fmt: skip


def metric_text(key: str, value: Any) -> tuple[str, str]:
    """(readable name, rounded value) of a metrics.json entry: accuracies and F1 in %, losses to 4
    places, counts with thousands separators."""
    name = METRIC_NAMES.get(key, key.replace("_", " "))
    if value is None:
        return name, "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return name, str(value)
    if "accuracy" in key or "f1" in key:
        return name, f"{100 * value:.2f}%"
    if isinstance(value, int):
        return name, f"{value:,}"
    if "seconds" in key:
        return name, f"{value:.1f}"
    return name, f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"


@dataclass(frozen=True)
class RunRecord:
    """What a run's report shows, gathered once at the end of training."""

    plan: BudgetPlan
    history: Sequence[Mapping[str, Any]]  # masking events
    initial_ranks: Mapping[str, int]
    ranks: Mapping[str, int]
    metrics: Mapping[str, Any]
    trace: Sequence[Mapping[str, int]] = ()  # per step: budget, live rank (AdaRankCallback.trace)
    log: Sequence[Mapping[str, Any]] = ()  # the Trainer's log history
    scores: Sequence[float] = ()  # triplet scores at the end
    description: Mapping[str, str] = field(default_factory=dict)  # model, dataset, method, ...
    config_text: str = ""
    samples: Sequence[Mapping[str, str]] = ()  # generation: a few test prompts, references and outputs


def samples_html(samples: Sequence[Mapping[str, str]]) -> str:
    """The generation samples as a table (prompt end, reference, generated), or nothing."""
    if not samples:
        return ""
    rows = "".join(
        "<tr>"
        + "".join(f"<td><pre>{html.escape(s[k])}</pre></td>" for k in ("prompt", "reference", "generated"))
        + "</tr>"
        for s in samples
    )
    return ("<h2>Generation samples (test, greedy)</h2><table><tr><th>prompt (its end)</th><th>reference</th>"
            f"<th>generated</th></tr>{rows}</table>")  # fmt: skip


def figure_html(name: str, caption: str) -> str:
    """An image with its caption (also the image's alt text)."""
    return (f'<figure><img src="{name}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
            "</figcaption></figure>")  # fmt: skip


PAGE_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:64em}img{max-width:100%}figure{margin:1.5em 0}"
    "figcaption{font-size:0.9em;color:#444}td,th{text-align:left;padding:2px 10px}"
    "pre{background:#f4f4f4;padding:8px;overflow-x:auto}"
)


def write_report(run_dir: Path, record: RunRecord) -> Path:
    """Write the PNGs and ``report.html`` (relative image links: opens from disk, no server, no network)."""
    plan = record.plan
    threshold = record.history[-1]["threshold"] if record.history else None
    figures = [("loss_curve.png", plot_loss_curve(record.log, run_dir / "loss_curve.png"),
                "Loss per logging step (the task loss plus the orthogonality penalty); validation loss too when "
                "the run evaluated during training.")]  # fmt: skip
    over_time = run_dir / "rank_over_time.png"
    if record.initial_ranks:  # none when the head alone was trained: no rank to show
        figures += [
            ("budget_curve.png", plot_budget_curve(plan, record.trace, run_dir / "budget_curve.png"),
             f"Planned budget b(t) in {plan.unit} against the live rank at every step: the triplets with λ·m ≠ 0 "
             "(0 at step 0, where every λ starts at 0). In the default mode a pruned λ may grow back between "
             "masking steps, so the live rank can exceed b(t) there; with budget.strict it cannot. Grey: warm-up; "
             "green: final phase with fixed masks."),
            ("rank_heatmap.png", plot_heatmap(record.ranks, run_dir / "rank_heatmap.png"),
             "Final rank of every adapter: one row per layer (layer 0 at the top), one column per weight type."),
            ("rank_over_time.png",
             plot_rank_over_time(record.history, record.initial_ranks, plan.total_steps, over_time),
             "Allocated rank of every module from step 0 to the end, one panel per layer, one line per weight type; "
             "it changes only at masking steps."),
        ]  # fmt: skip
    if record.scores:
        figures.append(("score_distribution.png",
                        plot_score_distribution(record.scores, threshold, run_dir / "score_distribution.png"),
                        "Importance scores of all triplets at the last masking step; the line is the threshold "
                        "below which triplets were pruned."))  # fmt: skip
    about = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in record.description.items()
    )
    metrics = "".join(
        "<tr><th>{}</th><td>{}</td></tr>".format(*map(html.escape, metric_text(k, v)))
        for k, v in record.metrics.items()
        if k != "eval_accuracy"  # the test accuracy again, under the name outside checks read
    )
    body = "".join(figure_html(name, caption) for name, _, caption in figures)
    ranks = rank_table(record.ranks) if record.ranks else "no adapters: the classification head alone was trained"
    config = f"<details><summary>config.yaml</summary><pre>{html.escape(record.config_text)}</pre></details>"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>adarank run report</title>
<style>{PAGE_STYLE}</style></head>
<body><h1>adarank run report</h1>
<h2>Run</h2><table>{about}</table>
<h2>Metrics</h2><table>{metrics}</table>
<h2>Final rank (layers x weight types)</h2><pre>{html.escape(ranks)}</pre>
{body}
{samples_html(record.samples)}
<h2>Configuration</h2>{config}
</body></html>
"""
    tmp = run_dir / "report.html.tmp"
    tmp.write_text(page)
    tmp.replace(run_dir / "report.html")
    return run_dir / "report.html"
