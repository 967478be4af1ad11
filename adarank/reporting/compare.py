"""`adarank compare RUN1 RUN2 ...`: finished runs side by side, read from their run directories
(metrics.json, config.yaml, allocation.json): a terminal table, and ``compare.html`` with every run's
rank heatmap on one colour scale and each run's per-module rank difference to the first run."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adarank.reporting.report import PAGE_STYLE, figure_html, metric_text, plot_heatmap

RUN_FILES = ("metrics.json", "config.yaml", "allocation.json")
COMPARED = (
    "test_accuracy", "validation_accuracy", "test_macro_f1", "test_answer_loss", "test_perplexity",
    "adapter_params_final", "trainable_params_final", "total_rank_final", "train_seconds",
)  # fmt: skip


@dataclass(frozen=True)
class RunSummary:
    """A finished run as `compare` reads it."""

    name: str  # a short label: the folder name, made unique
    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any]
    ranks: dict[str, int]

    def setting(self, dotted: str) -> Any:
        value: Any = self.config
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    @property
    def method(self) -> str:
        budget = self.config.get("budget", {})
        if budget.get("schedule") == "constant":
            return f"LoRA r={budget.get('init_rank')}"
        target = budget.get("target_params") or f"rank {budget.get('target_rank')}"
        return f"AdaLoRA {budget.get('init_rank')} -> {target}"


def load_runs(paths: list[Path]) -> list[RunSummary]:
    """Read every run, or raise ValueError listing every folder that is not a finished run."""
    import yaml

    problems, runs = [], []
    for path in paths:
        missing = [f for f in RUN_FILES if not (path / f).is_file()]
        if missing:
            problems.append(f"`{path}` is not a finished run directory (no {', '.join(missing)}).")
            continue
        try:
            metrics = json.loads((path / "metrics.json").read_text())
            ranks = json.loads((path / "allocation.json").read_text())
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except ValueError as err:  # json and yaml errors are ValueErrors
            problems.append(f"`{path}`: unreadable run file ({err}).")
            continue
        runs.append(RunSummary(path.name, path, metrics, config, ranks))
    if len(paths) < 2:
        problems.append("give at least two run directories to compare.")
    if problems:
        raise ValueError("\n".join(problems))
    names = [r.name for r in runs]
    return [
        RunSummary(
            r.name if names.count(r.name) == 1 else f"{r.name} ({r.path.parent.name})",
            r.path,
            r.metrics,
            r.config,
            r.ranks,
        )  # fmt: skip
        for r in runs
    ]


def rows(runs: list[RunSummary]) -> list[list[str]]:
    """The comparison as rows of text: a header with the run names, then model, data, method and the
    metrics any of the runs has."""
    table = [["", *(r.name for r in runs)]]
    for label, key in (("model", "model.name_or_path"), ("data", "data.dataset"), ("seed", "seed")):
        table.append([label, *(str(r.setting(key)) for r in runs)])
    table.append(["method", *(r.method for r in runs)])
    for key in COMPARED:
        if any(key in r.metrics for r in runs):
            name = metric_text(key, 0)[0]
            table.append([name, *(metric_text(key, r.metrics.get(key))[1] for r in runs)])
    return table


def compare_table(runs: list[RunSummary]) -> str:
    """The comparison as an aligned terminal table."""
    table = rows(runs)
    widths = [max(len(row[j]) for row in table) for j in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table)


def rank_difference(run: RunSummary, reference: RunSummary) -> dict[str, int]:
    """Per module: rank in ``run`` minus rank in ``reference`` (a module one run does not adapt counts
    as rank 0 there)."""
    names = list(dict.fromkeys([*reference.ranks, *run.ranks]))
    return {n: run.ranks.get(n, 0) - reference.ranks.get(n, 0) for n in names}


def write_compare(runs: list[RunSummary], out: Path) -> Path:
    """Write ``compare.html`` and its PNGs into ``out`` (files of the same names are replaced)."""
    out.mkdir(parents=True, exist_ok=True)
    top = max((max(r.ranks.values(), default=0) for r in runs), default=0)
    figures = []
    for i, run in enumerate(runs):
        png = plot_heatmap(run.ranks, out / f"compare_rank_{i}.png", f"{run.name}: final rank", vmax=max(top, 1))
        figures.append((png.name, f"{run.name} ({run.method}): final rank per layer and weight type; colour scale "
                                  f"0 to {top}, shared by every run's heatmap."))  # fmt: skip
    reference = runs[0]
    for i, run in enumerate(runs[1:], start=1):
        diff = rank_difference(run, reference)
        span = max((abs(v) for v in diff.values()), default=0) or 1
        png = plot_heatmap(diff, out / f"compare_diff_{i}.png", f"{run.name} minus {reference.name}", vmin=-span,
                           vmax=span, cmap="RdBu")  # fmt: skip
        figures.append((png.name, f"Rank of {run.name} minus rank of {reference.name}, per module (blue: more "
                                  f"rank in {run.name}; red: less)."))  # fmt: skip
    bases = {str(r.setting("model.name_or_path")) for r in runs}
    warning = (
        f"<p><strong>The runs use different base models ({', '.join(sorted(bases))}): compare their ranks "
        "with care.</strong></p>"
        if len(bases) > 1
        else ""
    )
    table = rows(runs)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1:])
    images = "".join(figure_html(name, caption) for name, caption in figures)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>adarank: runs compared</title>
<style>{PAGE_STYLE}</style></head>
<body><h1>adarank: runs compared</h1>{warning}
<table><tr>{head}</tr>{body}</table>
{images}
</body></html>
"""
    tmp = out / "compare.html.tmp"
    tmp.write_text(page)
    tmp.replace(out / "compare.html")
    return out / "compare.html"
