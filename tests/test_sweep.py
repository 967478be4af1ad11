"""scripts/sweep.py: a grid of real (tiny) runs, resumable, tabulated in CSV and Markdown."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_tiny_model

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "scripts" / "sweep.py"


def _sweep(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_sweep_runs_grid_resumes_and_tabulates(tmp_path: Path) -> None:
    model = tmp_path / "model"
    save_tiny_model(model, llama=False)
    methods = [str(ROOT / "configs" / f"rt-minilm-{m}.yaml") for m in ("adalora", "lora")]
    common = ["--methods", *methods, "--budgets", "budget.target_params=2000", "--seeds", "0", "--out",
              str(tmp_path / "sweep"), "--set", f"model.name_or_path={model}", "train.max_steps=4",
              "train.batch_size=8", "data.max_train_samples=32", "data.max_eval_samples=16", "budget.t_init=1",
              "budget.t_final=1", "budget.mask_interval=1", "wandb.mode=disabled"]  # fmt: skip
    first = _sweep(*common)
    assert "[1/2] rt-minilm-adalora budget.target_params=2000 seed 0: done" in first
    assert "[2/2] rt-minilm-lora budget.target_params=2000 seed 0: done" in first
    second = _sweep(*common)
    assert second.count(": skipped") == 2 and "$ " not in second
    with open(tmp_path / "sweep" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["status"]) for r in rows] == [("rt-minilm-adalora", "done"), ("rt-minilm-lora", "done")]
    # 8 tiny adapters cost 65 per triplet: AdaLoRA fits 30 triplets (1,950) in 2,000; LoRA rank 3 = 24 (1,560)
    assert [int(r["adapter_params_final"]) for r in rows] == [1950, 1560]
    table = (tmp_path / "sweep" / "results.md").read_text()
    assert "| rt-minilm-adalora | budget.target_params=2000 | 1 |" in table
