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
