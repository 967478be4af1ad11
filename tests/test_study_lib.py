"""scripts/study_lib.sh, the archive shared by the study scripts: what a resumed study relies on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash(script: str, cwd: Path) -> None:
    subprocess.run(["bash", "-c", f"set -euo pipefail; source {ROOT / 'scripts/study_lib.sh'}; {script}"],
                   cwd=cwd, check=True)  # fmt: skip


def _run(folder: Path, finished: bool = True) -> None:
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter.safetensors").write_bytes(b"weights")
    (folder / "sweep.json").write_text(json.dumps({"seed": 0}))
    (folder / "report.html").write_text("not archived")
    if finished:
        (folder / "metrics.json").write_text(json.dumps({"test_accuracy": 0.8}))
        (folder / "allocation.json").write_text("{}")


def test_archive_twice_restore_and_skip_unfinished(tmp_path: Path) -> None:
    out, archive = tmp_path / "runs", tmp_path / "reports"
    _run(out / "adalora" / "cfg" / "budget" / "seed0")
    _run(out / "lora" / "cfg" / "seed1")  # another depth (scripts/study_rt.sh's layout)
    _run(out / "adalora" / "cfg" / "budget" / "seed2", finished=False)
    _bash(f"archive_runs {out} {archive} adapters; archive_runs {out} {archive} adapters", tmp_path)
    files = sorted(str(p.relative_to(archive)) for p in archive.rglob("*") if p.is_file())
    assert files == [
        "adalora/cfg/budget/seed0/adapter/adapter.safetensors",  # once: a second archive replaces, never nests
        "adalora/cfg/budget/seed0/allocation.json",
        "adalora/cfg/budget/seed0/metrics.json",
        "adalora/cfg/budget/seed0/sweep.json",
        "lora/cfg/seed1/adapter/adapter.safetensors",
        "lora/cfg/seed1/allocation.json",
        "lora/cfg/seed1/metrics.json",
        "lora/cfg/seed1/sweep.json",
    ]
    _bash(f"archive_runs {out} {tmp_path / 'small'}", tmp_path)  # without "adapters": the JSON files only
    assert not list((tmp_path / "small").rglob("adapter"))
    fresh = tmp_path / "fresh"
    _bash(f"restore_runs {fresh} {archive}", tmp_path)
    assert (fresh / "lora" / "cfg" / "seed1" / "metrics.json").read_text() == '{"test_accuracy": 0.8}'
    (fresh / "lora" / "cfg" / "seed1" / "metrics.json").write_text("newer")
    _bash(f"restore_runs {fresh} {archive}", tmp_path)
    assert (fresh / "lora" / "cfg" / "seed1" / "metrics.json").read_text() == "newer", "restore never overwrites"
