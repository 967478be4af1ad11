"""Summarise studies/engine/run.sh's archived runs (studies/runs/engine/<engine>-seed<s>/) as reports/engine.md:
test and validation accuracy and training time per run, the means per engine, and new / old ratios.

    python studies/engine/report.py studies/runs/engine --out reports/engine.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for folder in sorted(args.runs.iterdir()):
        if not (folder / "metrics.json").is_file():
            continue
        engine, seed = folder.name.split("-seed")
        metrics = json.loads((folder / "metrics.json").read_text())
        record = (folder / "commit.txt").read_text().split("\n")
        dirty = any(line.strip() for line in record[1:])  # run.sh lists the tree's changed adarank/ files
        commit = record[0].strip()[:7] + ("+dirty" if dirty else "")
        rows.append((engine, int(seed), metrics, commit))
    folders = ", ".join(f"{e}-seed{s}" for e, s, _, _ in sorted(rows, key=lambda r: (r[0], r[1])))
    commits = ", ".join(sorted({r[3] for r in rows}))
    lines = [
        "# The default job under adarank 0.1.0's Trainer engine and the new engine (issue 35)",
        "",
        "`make train`'s job (AdaLoRA 12 -> 8 on MiniLM's attention linears, Rotten Tomatoes, 400 steps), seeds",
        "0-2, old and new interleaved on one 2-core machine with nothing else running, produced by",
        "`OLD=<worktree at 72bd570> NEW=<worktree at the new commit> studies/engine/run.sh`, summarised by",
        "`python studies/engine/report.py studies/runs/engine --out reports/engine.md`. Each run's files and commit",
        "are in studies/runs/engine/<engine>-seed<s>/. The two engines draw different batches (the Trainer's sampler",
        "against the engine's seeded stream), so runs of one seed differ by seed noise, not by a fixed offset.",
        "",
        f"Records: studies/runs/engine/{{{folders}}}/ (metrics.json, config.yaml, allocation.json, "
        f"train_log.json, commit.txt). Commits (commit.txt: the worktree's HEAD, with its changed adarank/ files "
        f"if any): {commits}.",
        "",
        "| engine | seed | commit | test accuracy | validation accuracy | train seconds | final total rank |",
        "|---|---|---|---|---|---|---|",
    ]
    for engine, seed, m, commit in sorted(rows, key=lambda r: (r[1], r[0] != "old")):
        lines.append(
            f"| {engine} | {seed} | {commit} | {100 * m['test_accuracy']:.2f}% | {100 * m['validation_accuracy']:.2f}% "
            f"| {m['train_seconds']:.1f} | {m['total_rank_final']} |"
        )
    means = {}
    for engine in ("old", "new"):
        mine = [m for e, _, m, _ in rows if e == engine]
        if mine:
            means[engine] = {
                key: statistics.mean(m[key] for m in mine)
                for key in ("test_accuracy", "validation_accuracy", "train_seconds")
            } | {"n": len(mine)}
    lines += ["", "| engine | runs | mean test accuracy | mean validation accuracy | mean train seconds |",
              "|---|---|---|---|---|"]  # fmt: skip
    for engine, m in means.items():
        lines.append(
            f"| {engine} | {m['n']} | {100 * m['test_accuracy']:.2f}% | {100 * m['validation_accuracy']:.2f}% "
            f"| {m['train_seconds']:.1f} |"
        )
    if len(means) == 2:
        old, new = means["old"], means["new"]
        lines += [
            "",
            f"New minus old: mean test accuracy {100 * (new['test_accuracy'] - old['test_accuracy']):+.2f} points, "
            f"validation {100 * (new['validation_accuracy'] - old['validation_accuracy']):+.2f} points; "
            f"training time new / old = {new['train_seconds'] / old['train_seconds']:.3f}.",
        ]
    lines += [
        "",
        "Caveats: one machine, three seeds; the six runs ran while the developer edited code and ran short",
        "commands (ruff, a few `python -c` imports) beside them, spread over all six runs alike; the new",
        "engine's runs are at 7c0b59f, before the review fixes that changed the logged loss (it now includes",
        "the orthogonality penalty, as the Trainer's did; training and accuracy are unaffected) and the",
        "gradient averaging of parameters that some processes do not reach (one process here: no effect).",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
