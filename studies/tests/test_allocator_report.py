"""studies/allocator_report.py: differences are paired by seed, and the issue's decision rule is applied
exactly (a clear win changes a default; a loss beyond noise anywhere, or mixed signs, keeps it)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "studies"))
_spec = importlib.util.spec_from_file_location("allocator_report", ROOT / "studies" / "allocator_report.py")
assert _spec is not None and _spec.loader is not None
report = importlib.util.module_from_spec(_spec)
sys.modules["allocator_report"] = report
_spec.loader.exec_module(report)


def _results(variant_em: list[float], variant_recall: list[float], variant_loss: float = 0.30) -> list:
    """base and one variant ("strict") on 3 seeds of every task; the variant's exact match and recall
    by seed as given, its answer loss and residual equal to base's unless said."""
    out = []
    for seed in range(3):
        for task in ("1/16", "1x"):
            out.append(report.Result("base", task, seed, {"test_accuracy": 0.80, "test_answer_loss": 0.30,
                                                           "params": 19080.0}, "abc"))  # fmt: skip
            out.append(report.Result("strict", task, seed, {"test_accuracy": variant_em[seed],
                                     "test_answer_loss": variant_loss, "params": 19080.0}, "abc"))  # fmt: skip
        out.append(report.Result("base", "planted", seed, {"recall": 0.9, "residual": 0.03}, "abc"))
        out.append(report.Result("strict", "planted", seed, {"recall": variant_recall[seed], "residual": 0.03}, "abc"))
    return out


def test_differences_are_paired_by_seed() -> None:
    results = _results([0.81, 0.79, 0.85], [0.9, 0.9, 0.9])
    assert [round(d, 6) for d in report.differences(results, "strict", "1/16", "test_accuracy")] == [0.01, -0.01, 0.05]


def test_the_decision_rule() -> None:
    # exact match +2.0, +2.1, +2.2 points: the interval [+1.75, +2.35] excludes 0, a clear win
    clear = _results([0.82, 0.821, 0.822], [0.95, 0.92, 0.93])
    assert report.verdict(clear, "strict") == (
        "make it the default: better beyond seed noise on 1/16 exact match %, 1x exact match %"
    )
    # +1, +2, +3 points ([-0.48, +4.48]) and recall higher on every seed, but the answer loss and the
    # residual tied: neither beyond noise nor better on every seed and measure
    tied = _results([0.81, 0.82, 0.83], [0.95, 0.92, 0.93])
    assert report.verdict(tied, "strict") == "keep the default: no clear win (mixed signs, within seed noise)"
    better_loss = _results([0.81, 0.82, 0.83], [0.95, 0.92, 0.93], variant_loss=0.29)
    assert report.verdict(better_loss, "strict").startswith(
        "make it the default: better beyond seed noise on 1/16 answer"
    )
    mixed = _results([0.81, 0.79, 0.82], [0.9, 0.9, 0.9])
    assert report.verdict(mixed, "strict") == "keep the default: no clear win (mixed signs, within seed noise)"
    worse_loss = _results([0.81, 0.82, 0.83], [0.95, 0.92, 0.93], variant_loss=0.35)  # worse on every seed, sd 0
    assert report.verdict(worse_loss, "strict").startswith("keep the default: worse beyond seed noise on 1/16 answer")
    two_seeds = [r for r in clear if not (r.variant == "strict" and r.task == "planted" and r.seed == 2)]
    assert report.verdict(two_seeds, "strict") == "incomplete (planted recall: 2 of 3 seeds)"


def test_runs_are_read_from_the_study_folders(tmp_path: Path) -> None:
    run = tmp_path / "reset" / "rt-smollm2-curve" / "target_params-19080_x" / "seed1"
    run.mkdir(parents=True)
    (run / "sweep.json").write_text(json.dumps({"budget": "budget.target_params=19080 budget.init_rank=1 "
                                                "budget.reset_pruned=true train.learning_rate=2e-3", "seed": 1,
                                                "commit": "abc1234"}))  # fmt: skip
    (run / "metrics.json").write_text(json.dumps({"test_accuracy": 0.8, "test_answer_loss": 0.25,
                                                  "adapter_params_final": 19000}))  # fmt: skip
    (run / "train_log.json").write_text(json.dumps([{"step": 1, "loss": 1.0, "grad_norm": 7.5}]))
    planted = {"variant": "reset", "seed": 1, "recall": 0.875, "residual": 0.02, "commit": "abc1234"}
    (tmp_path / "planted_reset-seed1.jsonl").write_text(json.dumps(planted) + "\n")
    results = report.load(tmp_path)
    assert results == [
        report.Result("reset", "1/16", 1, {"test_accuracy": 0.8, "test_answer_loss": 0.25, "params": 19000.0},
                      "abc1234", 7.5),
        report.Result("reset", "planted", 1, {"recall": 0.875, "residual": 0.02}, "abc1234"),
    ]  # fmt: skip
    text = report.report(results, "python studies/allocator_report.py X --out Y")
    assert (
        "| reset the pruned triplets' Adam state (`budget.reset_pruned=true`) | 1 | 80.00 | 0.250 | 19,000 | 7.5 |"
        in text
    )


def test_the_redrawn_curve_shows_each_method_at_2e_3_and_at_its_chosen_lr() -> None:
    """From the budget study: a method at lr 2e-3 and at the lr it chose (8e-3 here), seed 0 once (the
    seed phase's run where it ran twice), any other lr left out; Δ paired with the new default by seed."""
    study = report.STUDIES["smollm2"]

    def run(lr: float, seed: int, em: float, seed_phase: bool = False, loss: float = 0.3):
        metrics = {"test_accuracy": em, "test_answer_loss": 0.2, "validation_answer_loss": loss,
                   "adapter_params_final": 18_000}  # fmt: skip
        return report.Run("vo-top", "x", lr, seed, metrics, "c", study, seed_phase=seed_phase)

    runs = [run(5e-4, 0, 0.70, loss=0.5), run(2e-3, 0, 0.80, loss=0.4), run(8e-3, 0, 0.81, loss=0.2),
            run(8e-3, 0, 0.82, seed_phase=True), run(8e-3, 1, 0.83, seed_phase=True), run(2e-3, 1, 0.79)]  # fmt: skip
    rows = report.curve_rows(runs, "1/16")
    assert {key: {s: r.metrics["test_accuracy"] for s, r in seeds.items()} for key, seeds in rows.items()} == {
        ("vo-top", 2e-3): {0: 0.80, 1: 0.79},
        ("vo-top", 8e-3): {0: 0.82, 1: 0.83},
    }
    mine = [report.Result("per-param", "1/16", s, {"test_accuracy": em, "test_answer_loss": 0.2, "params": 18e3}, "c")
            for s, em in ((0, 0.84), (1, 0.85))]  # fmt: skip
    table = report.curve_table(mine, runs)
    # seeds 0 and 1: 80 - 84 and 79 - 85 points
    assert table[3] == (
        "| 1/16 | LoRA, v+o of the top layers (0.002) | 2 | 79.50 ± 0.71 | 0.200 ± 0.000 | 18,000 | "
        "-5.000 [-17.706, +7.706] |"
    )


def test_the_lr_probe_lists_each_seed() -> None:
    results = [
        report.Result("probe-mult3", "1/16", s, {"test_accuracy": em, "test_answer_loss": 0.2, "params": 18e3}, "c", g)
        for s, em, g in ((0, 0.84, 5.0), (1, 0.82, 7.25))
    ]
    assert (
        report.probe_table(results)[2] == "| lambda lr x3 | 2 | 83.00 ± 1.41 | 0.200 ± 0.000 | 5.0 7.2 | 84.00 82.00 |"
    )


def test_a_run_without_a_training_log_keeps_every_column() -> None:
    runs = [report.Result(v, "1/16", 0, {"test_accuracy": 0.8, "test_answer_loss": 0.2, "params": 18e3}, "c")
            for v in ("base", "strict")]  # fmt: skip
    assert report.task_table(runs, "1/16")[3] == (
        "| strict masking (`budget.strict=true`: no regrowth) | 1 | 80.00 | 0.200 | 18,000 | - | +0.000 (1 seed) | "
        "+0.000 (1 seed) | +0.00 |"
    )


def test_the_warm_start_is_paired_with_per_param_not_base() -> None:
    runs = [report.Result(v, "1/16", s, {"test_accuracy": em, "test_answer_loss": 0.2, "params": 18e3}, "c")
            for v, s, em in (("base", 0, 0.70), ("base", 1, 0.71), ("per-param", 0, 0.80), ("per-param", 1, 0.81),
                             ("warm", 0, 0.82), ("warm", 1, 0.80))]  # fmt: skip
    assert [round(d, 6) for d in report.differences(runs, "warm", "1/16", "test_accuracy")] == [0.02, -0.01]
    assert [round(d, 6) for d in report.differences(runs, "per-param", "1/16", "test_accuracy")] == [0.1, 0.1]


def test_the_good_lr_range_is_contiguous_around_the_best() -> None:
    # best 83.0 at 1e-2; 3e-3 (82.1) within 1 point, 1e-3 (81.9) not, so 3e-4 (82.5) is cut off though within
    curve = {3e-4: 82.5, 1e-3: 81.9, 3e-3: 82.1, 1e-2: 83.0, 3e-2: 60.0}
    assert report.good_range(curve) == (3e-3, 1e-2, False)
    assert report.good_range({1e-3: 80.0, 3e-3: 80.5}) == (1e-3, 3e-3, True)  # the whole grid: an edge
    assert report.good_range({1e-4: 70.0, 1e-3: 80.0, 1e-2: 79.0}) == (1e-3, 1e-2, True)  # exactly 1 point: in


def test_the_lr_table_reads_the_lr_study(tmp_path: Path) -> None:
    for method, lr, val in (("m3", "1e-3", 0.80), ("m3", "3e-3", 0.825), ("m3", "1e-2", 0.82), ("m3", "3e-2", 0.5)):
        run = tmp_path / method / "rt-minilm-adalora" / f"target_params-147648_lr-{lr}" / "seed0"
        run.mkdir(parents=True)
        budget = f"budget.target_params=147648 train.singular_lr_multiplier=3 train.learning_rate={lr}"
        (run / "sweep.json").write_text(json.dumps({"budget": budget, "seed": 0, "commit": "abc1234"}))
        (run / "metrics.json").write_text(json.dumps({"validation_accuracy": val, "eval_accuracy": val - 0.01}))
    runs = report.load_lr(tmp_path)
    assert [(r.lr, round(r.validation, 2), round(r.test, 2)) for r in runs] == [
        (1e-2, 82.0, 81.0), (1e-3, 80.0, 79.0), (3e-2, 50.0, 49.0), (3e-3, 82.5, 81.5)]  # fmt: skip
    table = report.lr_table(runs)
    assert table[2] == "| adarank AdaLoRA, lambda lr x3 | 0 | 80.00 | 82.50 | 82.00 | 50.00 | 0.003 (82.50) | " \
        "0.003 .. 0.01 | 0.5 |"  # fmt: skip
    assert table[-1] == "| adarank AdaLoRA, lambda lr x3 | 0 | 79.00 | 81.50 | 81.00 | 49.00 |"


def test_the_lr_decision_compares_each_width_with_peft_loras() -> None:
    def runs(method: str, curve: dict[float, float]) -> list:
        return [report.LrRun(method, lr, 0, v, v, "c") for lr, v in curve.items()]

    peft = runs("peft-lora", {1e-3: 82.0, 3e-3: 81.5, 1e-2: 60.0})  # 1e-3 .. 3e-3: 0.5 decades
    wide = runs("m10", {1e-3: 82.0, 3e-3: 82.5, 1e-2: 82.5})  # 1e-3 .. 1e-2: 1.0
    narrow = runs("m3", {1e-3: 80.0, 3e-3: 83.0, 1e-2: 81.0})  # 3e-3 alone: 0.0
    assert report.lr_decision(peft + wide + narrow) == (
        "the default's good lr range is at least as wide as PEFT LoRA r=8's (1.0 vs 0.5 decades, seed 0), so no "
        "candidate is needed and no default changed. The candidates: adarank AdaLoRA, lambda lr x3: 0.0 (narrower)."
    )
    assert report.lr_decision(peft + narrow) == "incomplete (PEFT LoRA's or the default's grid has no run)"
