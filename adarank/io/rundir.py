"""The run directory: one run at a time per folder (``OutputLock``), and files written whole
(``write_json_atomic``), so a run that dies leaves the last complete file, never half of one. Shared by
``adarank train`` and ``adarank intrinsic-dim``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` through a temporary file renamed over it."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def read_ranks(path: str | Path) -> tuple[dict[str, int], list[str]]:
    """The per-module ranks of ``path`` (a run directory or its allocation.json: module -> rank >= 0) and
    the problems found reading them (a missing file, bad JSON, a value that is not a rank), each with
    its fix; the ranks are empty when there is any problem."""
    file = Path(path)
    file = file / "allocation.json" if file.is_dir() else file
    where = f"adapter.ranks_from `{path}`"
    if not file.is_file():
        return {}, [f"{where}: no such file; give a finished run's directory or its allocation.json."]
    try:
        ranks = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return {}, [f"{where}: not readable JSON ({err}); give an allocation.json written by `adarank train`."]
    if not isinstance(ranks, dict) or not ranks:
        return {}, [f"{where}: expected a mapping of module name -> rank, as `adarank train` writes allocation.json."]
    bad = [f"{name}: {rank!r}" for name, rank in ranks.items() if type(rank) is not int or rank < 0]
    if bad:
        return {}, [f"{where}: ranks must be whole numbers >= 0, got {', '.join(bad[:3])}."]
    return ranks, []


class OutputLock:
    """Marks ``output_dir`` as in use by one run (``.adarank.lock`` with its pid), so two jobs that
    each think they are alone cannot write the same run directory."""

    def __init__(self, output_dir: Path):
        self.path = output_dir / ".adarank.lock"

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self.path.read_text().strip()
                if owner.isdigit() and _alive(int(owner)):
                    raise RuntimeError(
                        f"output_dir `{self.path.parent}` is in use by another adarank run (pid {owner}); "
                        "choose another output_dir or wait for it to finish."
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            return self
        raise RuntimeError(f"could not lock `{self.path}`; remove it if no run is using the directory.")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
