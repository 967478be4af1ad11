"""Run a grid of `adarank train` runs (methods x budgets x seeds) one after another, resumably, and
write one CSV and one Markdown table of their metrics.

    python scripts/sweep.py --methods configs/rt-minilm-adalora.yaml configs/rt-minilm-lora.yaml \\
        --budgets budget.target_params=37k budget.target_params=148k --seeds 0 1 2 \\
        --set train.max_steps=400 --out runs/sweep

A method is a config file; a budget is one or more space-separated `key=value` overrides (use
`budget.target_params`, which every method reads, to compare methods at equal parameters). Each run
goes to OUT/<method>/<budget>/seed<k>; a run whose metrics.json exists is skipped, so an interrupted
sweep resumes where it stopped. Each run is its own process: one failure is recorded and the sweep
goes on. The tables are rewritten after every run (OUT/results.csv, OUT/results.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

COLUMNS = (
    "method", "budget", "seed", "status", "eval_accuracy", "validation_accuracy", "trainable_params_initial",
    "trainable_params_final", "adapter_params_final", "total_rank_final", "train_seconds",
)  # fmt: skip


def slug(text: str) -> str:
    """A folder name for a budget's overrides, e.g. `budget.target_params=37k` -> `target_params-37k`."""
    return re.sub(r"[^A-Za-z0-9_.%-]+", "_", text.replace("budget.", "").replace("=", "-")).strip("_") or "default"


def run_dir(out: Path, method: Path, budget: str, seed: int) -> Path:
    return out / method.stem / slug(budget) / f"seed{seed}"


def run_one(method: Path, budget: str, seed: int, extra: list[str], folder: Path) -> str:
    """Train one grid point in a subprocess; returns its status (done, skipped, failed)."""
    if (folder / "metrics.json").is_file():
        return "skipped"
    command = [sys.executable, "-m", "adarank", "train", str(method), *budget.split(), f"seed={seed}",
               f"output_dir={folder}", "overwrite=true", *extra]  # fmt: skip
    print("$ " + " ".join(command), flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.log", "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    return "done" if code == 0 else f"failed (exit {code}, see {folder / 'train.log'})"


def collect(out: Path, methods: list[Path], budgets: list[str], seeds: list[int]) -> list[dict]:
    """One row per grid point, with the metrics of finished runs."""
    rows = []
    for method in methods:
        for budget in budgets:
            for seed in seeds:
                folder = run_dir(out, method, budget, seed)
                row: dict = {"method": method.stem, "budget": budget or "(config)", "seed": seed}
                metrics_file = folder / "metrics.json"
                if metrics_file.is_file():
                    metrics = json.loads(metrics_file.read_text())
                    row.update({k: metrics.get(k) for k in COLUMNS[4:]}, status="done")
                else:
                    row["status"] = "failed" if (folder / "train.log").is_file() else "pending"
                rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """Mean +- std (over seeds) of test accuracy and parameters per method and budget, then every run."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row["status"] == "done":
            groups.setdefault((row["method"], row["budget"]), []).append(row)
    lines = ["| method | budget | runs | test accuracy (mean +- std) | adapter params final | trainable at start |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for (method, budget), done in groups.items():
        acc = [100 * r["eval_accuracy"] for r in done]
        spread = f" +- {statistics.stdev(acc):.2f}" if len(acc) > 1 else ""
        lines.append(
            f"| {method} | {budget} | {len(done)} | {statistics.mean(acc):.2f}%{spread} | "
            f"{statistics.mean(r['adapter_params_final'] for r in done):,.0f} | "
            f"{statistics.mean(r['trainable_params_initial'] for r in done):,.0f} |"
        )
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_tables(out: Path, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv.tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: r.get(c, "") for c in COLUMNS} for r in rows)
    (out / "results.csv.tmp").replace(out / "results.csv")
    (out / "results.md.tmp").write_text(markdown(rows))
    (out / "results.md.tmp").replace(out / "results.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", type=Path, required=True, help="config files, one per method")
    parser.add_argument("--budgets", nargs="*", default=[""], help="override sets, e.g. budget.target_params=37k")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", nargs="*", default=[], dest="extra", help="overrides for every run")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    args = parser.parse_args(argv)
    missing = [str(m) for m in args.methods if not m.is_file()]
    if missing:
        parser.error(f"method config(s) not found: {', '.join(missing)}")
    grid = [(m, b, s) for m in args.methods for b in args.budgets for s in args.seeds]
    failures = 0
    for index, (method, budget, seed) in enumerate(grid, 1):
        status = run_one(method, budget, seed, args.extra, run_dir(args.out, method, budget, seed))
        failures += status.startswith("failed")
        print(f"[{index}/{len(grid)}] {method.stem} {budget or '(config)'} seed {seed}: {status}", flush=True)
        write_tables(args.out, collect(args.out, args.methods, args.budgets, args.seeds))
    print(f"tables: {args.out / 'results.csv'}, {args.out / 'results.md'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
