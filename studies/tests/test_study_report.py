"""studies/study_report.py: the statistics and the learning-rate choice behind reports/quality_rt.md."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("study_report", ROOT / "studies" / "study_report.py")
assert _spec is not None and _spec.loader is not None
study = importlib.util.module_from_spec(_spec)
sys.modules["study_report"] = study  # dataclasses look their module up
_spec.loader.exec_module(study)


def test_welch_interval_by_hand() -> None:
    # means 81 and 79, variances 1 and 1, n = 3: se = sqrt(2/3), df = 4, t(0.975, 4) = 2.776
    diff, half = study.welch([80.0, 81.0, 82.0], [78.0, 79.0, 80.0])
    assert diff == pytest.approx(2.0)
    assert half == pytest.approx(2.776 * (2 / 3) ** 0.5)
    assert study.verdict([80.0, 81.0, 82.0], [78.0, 79.0, 80.0]).endswith("no significant difference")
    assert study.verdict([85.0, 85.5, 86.0], [78.0, 79.0, 80.0]).endswith(" significant")
    assert study.verdict([80.0], [78.0, 79.0]) == "too few runs"


def _run(root: Path, method: str, overrides: str, seed: int, validation: float, test: float) -> None:
    folder = root / method / overrides.replace(" ", "_") / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"method": method, "budget": overrides, "seed": seed}))
    metrics = {"validation_accuracy": validation, "eval_accuracy": test, "trainable_params_initial": 10,
               "trainable_params_final": 9, "adapter_params_final": 8, "train_seconds": 1.0}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_learning_rate_is_chosen_on_validation_at_the_largest_budget(tmp_path: Path) -> None:
    big, small = "budget.target_params=800", "budget.target_params=200"
    _run(tmp_path, "m", f"{big} train.learning_rate=1e-3", 0, validation=0.80, test=0.70)
    _run(tmp_path, "m", f"{big} train.learning_rate=3e-3", 0, validation=0.82, test=0.60)  # best validation
    _run(tmp_path, "m", f"{small} train.learning_rate=1e-3", 0, validation=0.90, test=0.90)  # other budget
    _run(tmp_path, "m", f"{big} train.learning_rate=1e-2", 1, validation=0.99, test=0.99)  # other seed
    _run(tmp_path, "m", f"{big} train.learning_rate=1e-2 budget.strict=true", 0, validation=0.99, test=0.99)
    runs = study.load_runs(tmp_path)
    assert len(runs) == 5
    assert study.best_lrs(runs) == {"m": 3e-3}
    assert {r.variant for r in runs} == {"default", "budget.strict=true"}


def test_all_linear_runs_get_their_own_section_with_the_ffn_share(tmp_path: Path) -> None:
    lr = "train.learning_rate=1e-2"
    _run(tmp_path / "runs", "rt-minilm-adalora", f"budget.target_params=800 {lr}", 0, validation=0.8, test=0.7)
    stem = "bert.encoder.layer.{}."
    for seed, ffn_rank in ((0, 3), (1, 5)):
        _run(tmp_path / "runs", study.ALL_LINEAR, lr, seed, validation=0.9, test=0.80 + seed / 100)
        folder = tmp_path / "runs" / study.ALL_LINEAR / lr / f"seed{seed}"
        ranks = {}
        for layer in (0, 1):
            ranks[stem.format(layer) + "attention.self.query"] = 4
            ranks[stem.format(layer) + "attention.output.dense"] = 2
            ranks[stem.format(layer) + "intermediate.dense"] = ffn_rank
            ranks[stem.format(layer) + "output.dense"] = 1
        (folder / "allocation.json").write_text(json.dumps(ranks))
        metrics = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps({**metrics, "total_rank_final": sum(ranks.values())}))
    runs = study.load_runs(tmp_path / "runs")
    assert study.best_lrs(runs) == {"rt-minilm-adalora": 1e-2}  # the all-linear runs have no param budget
    assert study.method_name(study.ALL_LINEAR) == "adarank AdaLoRA (all linears)"
    text = study.report(tmp_path / "runs", tmp_path / "quality.md")
    section = text.split("## All linears: does the FFN get more rank?", 1)[1].split("## Every run")[0]
    # mean FFN rank per layer: intermediate (3 + 5) / 2 = 4, output 1 -> 2 layers x 5 = 10 of 2 x 11 = 22
    assert "FFN adapters keep 10 of the 22 triplets (45%" in section
    assert "Test accuracy 80.50 ± 0.71% over 2 seed(s)" in section
    assert (tmp_path / "quality_rt_heatmap_all.png").is_file()
    main_table = text.split("## Test accuracy at equal final budget", 1)[1].split("## Where the rank goes")[0]
    assert "all linears" not in main_table
