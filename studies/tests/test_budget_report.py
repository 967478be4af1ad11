"""studies/budget_report.py: a learning rate is chosen only once the study's whole grid has run, and
runs are placed on the curve by their study's own fractions."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("budget_report", ROOT / "studies" / "budget_report.py")
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
    and the final summary have no "loss"), and the largest gradient norm; "-" / None without a log."""
    log = tmp_path / "train_log.json"
    log.write_text(json.dumps([
        {"loss": 6.8, "grad_norm": 3.5, "step": 4}, {"loss": 0.378, "grad_norm": 55.3, "step": 36},
        {"validation_loss": 0.1, "step": 40}, {"loss": 0.4, "grad_norm": 0.9, "step": 40},
        {"loss": 2.173, "step": 80}, {"train_runtime": 600.0, "step": 80},
    ]))  # fmt: skip
    losses = report.training_losses(log)
    assert losses == ((4, 6.8), (36, 0.378), (40, 0.4), (80, 2.173))
    assert report.largest_grad_norm(log) == 55.3 and report.largest_grad_norm(tmp_path / "absent.json") is None
    run = _run(5e-4, 2.157, params=4_226)
    assert report.loss_path(run) == "-" and report.training_losses(tmp_path / "absent.json") == ()
    assert report.loss_path(dataclasses.replace(run, losses=losses)) == "0.378 (36) → 2.173"


def _archived(folder: Path, method: str, lr: str, seed: int, metrics: dict) -> None:
    run = folder / method / "cfg" / f"lr-{lr}" / f"seed{seed}"
    run.mkdir(parents=True)
    budget = f"budget.target_params=19080 train.learning_rate={lr}"
    (run / "sweep.json").write_text(json.dumps({"budget": budget, "seed": seed, "commit": f"c-{lr}"}))
    (run / "metrics.json").write_text(json.dumps({"adapter_params_final": 19_000, **metrics}))


def test_the_seed_phases_rerun_of_seed_0_is_the_curves_and_is_compared_with_the_grids(tmp_path: Path) -> None:
    """The study's seed phase spells the chosen lr as `best` prints it (0.002) and runs seed 0 again: the
    lr choice reads the grid alone, the curve takes the rerun, and the pair is reported side by side."""
    for lr, loss in (("5e-4", 0.30), ("2e-3", 0.19), ("8e-3", 0.25)):
        _archived(tmp_path, "adalora", lr, 0, {"validation_answer_loss": loss, "test_accuracy": 0.80,
                                               "test_answer_loss": 0.20})  # fmt: skip
    for seed, accuracy in ((0, 0.83), (1, 0.82)):  # a validation loss that must not undo the lr choice
        _archived(tmp_path, "adalora", "0.002", seed, {"validation_answer_loss": 0.90, "test_accuracy": accuracy,
                                                       "test_answer_loss": 0.18})  # fmt: skip
    runs = report.load_runs(tmp_path, SMOLLM2)
    assert [(r.lr, r.seed, r.seed_phase) for r in runs] == [
        (0.002, 0, True), (0.002, 1, True), (2e-3, 0, False), (5e-4, 0, False), (8e-3, 0, False),
    ]  # fmt: skip
    assert report.best_lrs(runs, SMOLLM2.lr_grid) == {"adalora": 2e-3}
    curve = report.curves(runs, {"adalora": 2e-3})[("adalora", "1/16")]
    assert {seed: (run.seed_phase, run.metrics["test_accuracy"]) for seed, run in curve.items()} == {
        0: (True, 0.83),
        1: (True, 0.82),
    }
    pairs = report.reruns(runs)
    assert [(a.commit, b.commit) for a, b in pairs] == [("c-2e-3", "c-0.002")]
    section = report.rerun_section(pairs, "exact match")
    row = "| adalora | 1/16 (19,000) | 0.002 | c-2e-3 → c-0.002 | 80.00 → 83.00 (+3.00) | 0.200 → 0.180 (-0.020) |"
    assert row in section
    assert section[-2] == "Mean |difference| over 1 pairs: 3.00 points of exact match, 0.020 answer loss."


def test_the_lr_check_is_tabulated_apart_once_it_has_runs_beyond_the_grid(tmp_path: Path) -> None:
    """Step 3 of the study (every method below one rank per module at the check lr, seeds 1 and 2): a
    section of its own, paired with AdaLoRA at the same lr; absent while only the grid's seed 0 is there."""
    for method, accuracy in (("adalora", 0.80), ("vo-top", 0.79)):
        _archived(tmp_path, method, "2e-3", 0, {"test_accuracy": accuracy, "test_answer_loss": 0.2})
    assert report.check_section(report.load_runs(tmp_path, SMOLLM2), SMOLLM2) == []
    for method, accuracy in (("adalora", 0.82), ("vo-top", 0.83)):
        _archived(tmp_path, method, "2e-3", 1, {"test_accuracy": accuracy, "test_answer_loss": 0.2})
    section = report.check_section(report.load_runs(tmp_path, SMOLLM2), SMOLLM2)
    assert section[0] == "## A check: every method at lr 0.002 below one rank per module"
    rows = [line for line in section if line.startswith("| 1/16 ")]
    assert rows[0].startswith("| 1/16 | adarank AdaLoRA | 2 | 19,000 | 81.00 ± 1.41 |")
    assert rows[1].startswith("| 1/16 | LoRA, v+o of the top layers | 2 | 19,000 | 81.00 ± 2.83 |")
    assert "| +0.000 [-12.706, +12.706] |" in rows[1] and rows[1].endswith("| - / - |")
