"""scripts/budget_report.py: a learning rate is chosen only once the study's whole grid has run, and
runs are placed on the curve by their study's own fractions."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("budget_report", ROOT / "scripts" / "budget_report.py")
assert _spec is not None and _spec.loader is not None
report = importlib.util.module_from_spec(_spec)
sys.modules["budget_report"] = report
_spec.loader.exec_module(report)
SMOLLM2, MINILM = report.STUDIES["smollm2"], report.STUDIES["minilm"]


def _run(lr: float, loss: float, params: int = 19_080, study=SMOLLM2, method: str = "adalora") -> object:
    metrics = {"validation_answer_loss": loss, "adapter_params_final": params}
    return report.Run(method, "budget.target_params=19080", lr, 0, metrics, "abc", study)


def test_no_lr_is_chosen_before_the_whole_grid_has_run() -> None:
    two = [_run(5e-4, 0.24), _run(2e-3, 0.19)]
    assert report.best_lrs(two, SMOLLM2.lr_grid) == {}
    assert report.best_lrs([*two, _run(8e-3, 0.30)], SMOLLM2.lr_grid) == {"adalora": 2e-3}
    assert report.best_lrs([*two, _run(8e-3, 0.10)], SMOLLM2.lr_grid) == {"adalora": 8e-3}


def test_a_run_is_placed_by_its_own_studys_fractions() -> None:
    assert _run(5e-4, 0.2, params=19_023).fraction == "1/16"  # 19,023 / 305,280 = 0.062
    assert _run(0.0, 0.2, params=4_614, study=MINILM).fraction == "1/8"  # 4,614 / 41,472 = 0.111
    assert _run(0.0, 0.2, params=0, study=MINILM, method="head-only").fraction == "0"


def test_the_training_loss_path_reads_the_archived_log(tmp_path: Path) -> None:
    """lowest (its step) -> last training loss from train_log.json's training entries (evaluation entries
    and the final summary have no "loss"); "-" for a run archived without its log."""
    log = tmp_path / "train_log.json"
    log.write_text(json.dumps([
        {"loss": 6.8, "step": 4}, {"loss": 0.378, "step": 36}, {"validation_loss": 0.1, "step": 40},
        {"loss": 0.4, "step": 40}, {"loss": 2.173, "step": 80}, {"train_runtime": 600.0, "step": 80},
    ]))  # fmt: skip
    losses = report.training_losses(log)
    assert losses == ((4, 6.8), (36, 0.378), (40, 0.4), (80, 2.173))
    run = _run(5e-4, 2.157, params=4_226)
    assert report.loss_path(run) == "-" and report.training_losses(tmp_path / "absent.json") == ()
    assert report.loss_path(dataclasses.replace(run, losses=losses)) == "0.378 (36) → 2.173"
