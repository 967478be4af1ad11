"""Where a measurement came from: the commit every benchmark prints or records beside its figures, and the
JSON-lines records the multi-process benchmarks write (one line per process and run)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def commit(checkout: Path = ROOT) -> str:
    """The commit checked out at ``checkout`` (this repository by default), `+dirty` when tracked files have
    changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=checkout,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")


def emit(record: dict, out: Path | None) -> None:
    """Print ``record`` as one JSON line and append it to ``out`` (one short line per process: appends from
    processes side by side do not interleave)."""
    print(json.dumps(record), flush=True)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_records(path: Path) -> list[dict]:
    """The records of a JSON-lines file written by ``emit``."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
