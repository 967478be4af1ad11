"""Run a grid of training runs (methods x budgets x seeds), resumably, and write one CSV and one
Markdown table of their metrics.

    python studies/sweep.py --methods configs/rt-minilm-adalora.yaml configs/rt-minilm-lora.yaml \\
        peft-lora:configs/rt-minilm-lora.yaml peft-adalora:configs/rt-minilm-adalora.yaml \\
        --budgets budget.target_params=37k budget.target_params=148k --seeds 0 1 2 \\
        --set train.max_steps=400 --out runs/sweep --jobs 2

A method is a config file trained by `adarank train`, or `peft-lora:CONFIG` / `peft-adalora:CONFIG` /
`peft-eva:CONFIG` trained by PEFT on the same config (studies/peft_run.py). A budget is one or more space-separated
`key=value` overrides (`budget.target_params`, which every method reads, compares methods at equal
parameters; other keys, e.g. a learning rate, may ride along). Each run goes to
OUT/<method>/<budget>/seed<k> with a sweep.json naming its grid point; a run whose metrics.json
exists is skipped, so an interrupted sweep resumes where it stopped. Each run is its own process
(`--jobs N` runs N at once, each with OMP_NUM_THREADS = cores / N, or the caller's OMP_NUM_THREADS if
that is lower: two sweeps sharing a machine set it to 1 each): one failure is recorded and the
sweep goes on. The tables cover every run under OUT, from this grid or earlier ones, and are
rewritten after every run (OUT/results.csv, OUT/results.md).
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
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

COLUMNS = (
    "method", "budget", "seed", "status", "eval_accuracy", "validation_accuracy", "trainable_params_initial",
    "trainable_params_final", "adapter_params_final", "total_rank_final", "train_seconds",
)  # fmt: skip
RUNNERS = ("adarank", "peft-lora", "peft-adalora", "peft-eva")
PEFT_RUN = Path(__file__).with_name("peft_run.py")


def parse_method(spec: str) -> tuple[str, Path, str]:
    """`[RUNNER:]CONFIG` -> (runner, config file, method name); the name is the config's stem,
    prefixed by the runner for PEFT's methods."""
    runner, _, config = spec.partition(":") if spec.split(":", 1)[0] in RUNNERS else ("", "", spec)
    runner = runner or "adarank"
    path = Path(config)
    return runner, path, path.stem if runner == "adarank" else f"{runner}_{path.stem}"


def slug(text: str) -> str:
    """A folder name for a budget's overrides, e.g. `budget.target_params=37k` -> `target_params-37k`."""
    return re.sub(r"[^A-Za-z0-9_.%-]+", "_", text.replace("budget.", "").replace("=", "-")).strip("_") or "default"


def run_dir(out: Path, method: str, budget: str, seed: int) -> Path:
    return out / method / slug(budget) / f"seed{seed}"


def commit() -> str:
    """The checked-out commit, `+dirty` when tracked files have changes: recorded with every run."""
    repo = Path(__file__).parent  # the checkout this script (and the adarank beside it) came from
    git = {"capture_output": True, "text": True, "cwd": repo}
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **git)
    return (head or "unknown") + ("+dirty" if dirty.stdout.strip() else "")


def run_threads(cores: int, jobs: int, caller: str | None) -> int:
    """Threads per run: the cores shared by the runs at once, never more than the caller's
    OMP_NUM_THREADS. Raising it would oversubscribe the cores when two sweeps (or a sweep and a test
    run) share the machine, and OpenMP threads that wait on each other then run several times slower
    than one thread each (measured: a SmolLM2 study step took about 30 s with two studies at 2 threads
    each on 2 cores, about 3.4 s with one of them paused)."""
    threads = max(1, cores // jobs)
    if caller and caller.strip().isdigit() and int(caller) >= 1:
        threads = min(threads, int(caller))
    return threads


def run_one(spec: str, budget: str, seed: int, extra: list[str], folder: Path, threads: int) -> str:
    """Train one grid point in a subprocess; returns its status (done, skipped, failed)."""
    if (folder / "metrics.json").is_file():
        return "skipped"
    runner, config, name = parse_method(spec)
    head = [sys.executable, "-m", "adarank", "train"] if runner == "adarank" else [
        sys.executable, str(PEFT_RUN), runner.removeprefix("peft-")]  # fmt: skip
    command = [*head, str(config), *budget.split(), f"seed={seed}", f"output_dir={folder}", "overwrite=true", *extra]
    print("$ " + " ".join(command), flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    point = {"method": name, "budget": budget or "(config)", "seed": seed, "command": command, "commit": commit()}
    (folder / "sweep.json").write_text(json.dumps(point, indent=2))
    # the adarank beside this script, also for the PEFT runner (run as a file, its sys.path starts at studies/,
    # so an editable install elsewhere would otherwise be imported): a worktree's runs use its own commit
    repo = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(
        p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)}  # fmt: skip
    with open(folder / "train.log", "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return "done" if code == 0 else f"failed (exit {code}, see {folder / 'train.log'})"


def collect(out: Path, grid: list[tuple[str, str, int]]) -> list[dict]:
    """One row per run folder under ``out`` (this grid's pending points included), with the metrics
    of finished runs; sorted by method, budget and seed."""
    points = {}
    for marker in out.glob("*/*/seed*/sweep.json"):
        point = json.loads(marker.read_text())
        points[marker.parent] = (point["method"], point["budget"], int(point["seed"]))
    for spec, budget, seed in grid:
        name = parse_method(spec)[2]
        points.setdefault(run_dir(out, name, budget, seed), (name, budget or "(config)", seed))
    rows = []
    for folder, (method, budget, seed) in sorted(points.items(), key=lambda item: item[1]):
        row: dict = {"method": method, "budget": budget, "seed": seed}
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
    parser.add_argument(
        "--methods", nargs="+", required=True, help="[peft-lora:|peft-adalora:|peft-eva:]CONFIG, one per method"
    )
    parser.add_argument("--budgets", nargs="*", default=[""], help="override sets, e.g. budget.target_params=37k")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", nargs="*", default=[], dest="extra", help="overrides for every run")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cores / jobs threads)")
    args = parser.parse_args(argv)
    missing = [spec for spec in args.methods if not parse_method(spec)[1].is_file()]
    if missing:
        parser.error(f"method config(s) not found: {', '.join(missing)}")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    grid = [(m, b, s) for m in args.methods for b in args.budgets for s in args.seeds]
    threads = run_threads(os.cpu_count() or 1, args.jobs, os.environ.get("OMP_NUM_THREADS"))
    lock = threading.Lock()
    finished: list[str] = []

    def one(point: tuple[str, str, int]) -> str:
        spec, budget, seed = point
        status = run_one(
            spec, budget, seed, args.extra, run_dir(args.out, parse_method(spec)[2], budget, seed), threads
        )
        with lock:
            finished.append(status)
            print(f"[{len(finished)}/{len(grid)}] {parse_method(spec)[2]} {budget or '(config)'} seed {seed}: {status}",
                  flush=True)  # fmt: skip
            write_tables(args.out, collect(args.out, grid))
        return status

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        statuses = list(pool.map(one, grid))
    print(f"tables: {args.out / 'results.csv'}, {args.out / 'results.md'}")
    return 1 if any(s.startswith("failed") for s in statuses) else 0


if __name__ == "__main__":
    sys.exit(main())
