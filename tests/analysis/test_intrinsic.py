"""`adarank intrinsic-dim`: the grid, the bisection (known answers on synthetic curves), and the command."""

from __future__ import annotations

import math

import pytest

from adarank.analysis.intrinsic import Crossing, find_crossing, geometric_grid, interpolated_dimension, target_value
from adarank.checks import load_config
from adarank.config import ConfigError, IntrinsicDimRunConfig


def test_geometric_grid() -> None:
    assert geometric_grid(16, 1024, 2) == [16, 32, 64, 128, 256, 512, 1024]
    assert geometric_grid(10, 1000, 3) == [10, 30, 90, 270, 810]
    assert geometric_grid(1, 3, 1.2) == [1, 2, 3]  # rounding never repeats a point
    assert geometric_grid(5, 5, 2) == [5]


def test_target_value_either_direction() -> None:
    assert target_value(0.6, 0.8, 0.9) == pytest.approx(0.78)
    assert target_value(2.0, 1.0, 0.9) == pytest.approx(1.1)  # a loss: lower is better


def _counting(curve):  # noqa: ANN001, ANN202
    calls: dict[tuple[int, int], float] = {}

    def measure(dim: int, seed: int) -> float:
        if (dim, seed) not in calls:
            calls[(dim, seed)] = curve(dim, seed)
        return calls[(dim, seed)]

    return measure, calls


def test_bisection_finds_the_first_grid_point_past_the_target() -> None:
    """A monotone curve crossing 0.79 between 128 and 256: found with 1 + log2(11) one-seed runs, then 3
    seeds at the two bracketing points only."""
    grid = geometric_grid(1, 1024, 2)  # 11 points
    measure, calls = _counting(lambda d, seed: 0.5 + 0.04 * math.log2(d))  # 0.82 at 256, 0.78 at 128
    crossing = find_crossing(grid, measure, 0.79, True, seeds=3)
    assert (grid[crossing.above], grid[crossing.below]) == (256, 128)  # type: ignore[index]
    assert {d for d, s in calls if s > 0} == {128, 256}
    assert len({d for d, _ in calls}) <= 1 + math.ceil(math.log2(len(grid))) + 1


def test_seed_means_move_the_bracket() -> None:
    """Seed 0 is lucky at 64 (it reaches the target alone); the mean over 3 seeds does not, so the bracket
    moves up to 128, which is then measured with all 3 seeds."""
    grid = geometric_grid(16, 1024, 2)

    def curve(d: int, seed: int) -> float:
        return 0.9 if d >= 128 else (0.85 if d == 64 and seed == 0 else 0.5)

    measure, calls = _counting(curve)
    crossing = find_crossing(grid, measure, 0.8, True, seeds=3)
    assert (grid[crossing.above], grid[crossing.below]) == (128, 64)  # type: ignore[index]
    assert all((d, s) in calls for d in (64, 128) for s in range(3))


def test_a_loss_below_the_grid_and_beyond_it() -> None:
    grid = [8, 16, 32]
    measure, _ = _counting(lambda d, seed: 1.0)  # lower is better: already at the target everywhere
    assert find_crossing(grid, measure, 1.5, False, seeds=2) == Crossing(0, None)
    measure, calls = _counting(lambda d, seed: 3.0)  # never reaches it: one run at the top of the grid
    crossing = find_crossing(grid, measure, 1.5, False, seeds=2)
    assert (crossing.above, crossing.below) == (None, 2) and list(calls) == [(32, 0)]


def test_interpolation_on_a_log_scale() -> None:
    assert interpolated_dimension((100, 0.7), (400, 0.9), 0.8) == pytest.approx(200.0)
    assert interpolated_dimension((100, 0.7), (400, 0.9), 0.95) == pytest.approx(400.0)  # clipped


def test_config_problems_all_at_once(tmp_path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["intrinsic_dim.min_dim=0", "intrinsic_dim.grid_factor=1", "intrinsic_dim.fraction=1.5",
                           f"intrinsic_dim.reference={tmp_path}", "intrinsic_dim.head=trained",
                           "intrinsic_dim.metric=f1", f"intrinsic_dim.floor_run={tmp_path}"],
                    schema=IntrinsicDimRunConfig)  # fmt: skip
    text = str(err.value)
    for expected in (
        "intrinsic_dim.min_dim (0) must be >= 1",
        "intrinsic_dim.grid_factor (1.0) must be > 1",
        "intrinsic_dim.fraction (1.5) must be in (0, 1]",
        f"intrinsic_dim.reference `{tmp_path}` is neither a number nor a run directory",
        "intrinsic_dim.head `trained` is not one of subspace, fixed",
        "intrinsic_dim.metric `f1` is not one of accuracy, loss",
        f"intrinsic_dim.floor_run `{tmp_path}` is not a finished run",
    ):
        assert expected in text
    assert (
        load_config(None, ["intrinsic_dim.reference=0.8"], schema=IntrinsicDimRunConfig).intrinsic_dim.reference
        == "0.8"
    )


class _FakeRunner:
    """The runner's interface with a known curve: accuracy 0.5 + 0.05·log2(d / 16), floor 0.6, reference 0.9."""

    metric, higher_is_better, subspace_size, layer_scales, head_modules = "validation_accuracy", True, 1000, 4, ["h"]

    def __init__(self) -> None:
        self.trained: list[tuple[str, int, int]] = []

    def floor(self) -> float:
        self.trained.append(("floor", 0, 0))
        return 0.6

    def reference(self) -> float:
        self.trained.append(("reference", 0, 0))
        return 0.9

    def subspace(self, dim: int, seed: int) -> float:
        self.trained.append(("subspace", dim, seed))
        return 0.5 + 0.05 * math.log2(dim / 16) + 0.001 * seed


def test_measurement_result_and_resume(tmp_path, capsys) -> None:
    """Target 0.6 + 0.9·0.3 = 0.87: the curve reaches it first at 4096 (0.85 at 2048 with seed 0); the result
    holds the contract keys, the interpolation on the seed means, and every measurement; a second run over
    the same points file trains nothing and gives the same result."""
    from adarank.analysis.intrinsic import _config_text, _measure, _Points

    cfg = load_config(
        None,
        ["intrinsic_dim.min_dim=16", "intrinsic_dim.max_dim=8192", "intrinsic_dim.seeds=2"],
        schema=IntrinsicDimRunConfig,
    )
    runner = _FakeRunner()
    result = _measure(cfg, runner, _Points(tmp_path / "points.json", _config_text(cfg)))  # type: ignore[arg-type]
    assert (result["floor"], result["reference"], result["target"]) == pytest.approx((0.6, 0.9, 0.87))
    assert result["intrinsic_dimension"] == 4096
    low, high = 0.5 + 0.05 * 7 + 0.0005, 0.5 + 0.05 * 8 + 0.0005  # means over seeds 0 and 1 at 2048 and 4096
    assert result["intrinsic_dimension_interpolated"] == pytest.approx(
        2 ** (11 + (0.87 - low) / (high - low)), rel=1e-9
    )
    assert {(k, d, s) for k, d, s in runner.trained if s == 1} == {("subspace", 2048, 1), ("subspace", 4096, 1)}
    assert len(result["points"]) == len(runner.trained) and result["head"] == "subspace" and result["layer_scales"] == 0
    again = _FakeRunner()
    assert _measure(cfg, again, _Points(tmp_path / "points.json", _config_text(cfg))) == result  # type: ignore[arg-type]
    assert again.trained == [] and "resuming from" in capsys.readouterr().out
    changed = load_config(
        None,
        ["intrinsic_dim.min_dim=32", "intrinsic_dim.max_dim=8192", "intrinsic_dim.seeds=2"],
        schema=IntrinsicDimRunConfig,
    )
    fresh = _FakeRunner()
    _measure(changed, fresh, _Points(tmp_path / "points.json", _config_text(changed)))  # type: ignore[arg-type]
    assert fresh.trained, "another configuration never reuses the points"


def test_no_gap_between_floor_and_reference_is_refused(tmp_path) -> None:
    from adarank.analysis.intrinsic import _config_text, _measure, _Points

    cfg = load_config(None, ["intrinsic_dim.reference=0.55"], schema=IntrinsicDimRunConfig)
    with pytest.raises(ConfigError, match=r"the reference \(0.5500\) is not better than the floor \(0.6000\)"):
        _measure(cfg, _FakeRunner(), _Points(tmp_path / "p.json", _config_text(cfg)))  # type: ignore[arg-type]


def _check_result(result: dict, rows: int, seeds: int) -> None:
    """What must hold of an intrinsic_dim.json measured on ``rows`` validation rows (accuracy, higher is
    better): the target is floor + fraction (reference - floor), strictly above the floor and at most the
    reference; every value is a whole number of right answers; and the verdict is the measured points': d90
    is a grid point whose mean over ``seeds`` seeds reaches the target while every smaller point measured
    falls short (the one below over ``seeds`` seeds too), the interpolation lies between the two; or, not
    reached, the top of the grid falls short."""
    floor, reference, target, grid = result["floor"], result["reference"], result["target"], result["grid"]
    assert target == pytest.approx(floor + result["fraction"] * (reference - floor), abs=1e-12)
    assert floor < target <= reference
    for point in result["points"]:
        assert point["value"] * rows == pytest.approx(round(point["value"] * rows), abs=1e-9), point
    by_dim: dict[int, list[float]] = {}
    for point in result["points"]:
        if point["kind"] == "subspace":
            by_dim.setdefault(point["dim"], []).append(point["value"])
    assert set(by_dim) <= set(grid)
    means = {dim: sum(values) / len(values) for dim, values in by_dim.items()}
    found, interpolated = result["intrinsic_dimension"], result["intrinsic_dimension_interpolated"]
    if found is None:
        assert means[grid[-1]] < target and interpolated is None, means
        return
    assert means[found] >= target and len(by_dim[found]) == seeds, means
    below = [dim for dim in means if dim < found]
    assert all(means[dim] < target for dim in below), means
    if below:
        assert len(by_dim[max(below)]) == seeds and max(below) <= interpolated <= found
    else:
        assert interpolated == found


def test_the_result_check_knows_a_crossing(tmp_path) -> None:
    """``_check_result`` on the fake runner's known crossing (d90 = 4096, bracket 2048..4096) and on results that
    break it: a wrong target, a d90 the points do not support, an interpolation outside the bracket."""
    from adarank.analysis.intrinsic import _config_text, _measure, _Points

    cfg = load_config(None, ["intrinsic_dim.min_dim=16", "intrinsic_dim.max_dim=8192", "intrinsic_dim.seeds=2"],
                      schema=IntrinsicDimRunConfig)  # fmt: skip
    result = _measure(cfg, _FakeRunner(), _Points(tmp_path / "points.json", _config_text(cfg)))  # type: ignore[arg-type]
    for point in result["points"]:  # the fake curve is not on a grid of right answers: count per 1e6 rows
        point["value"] = round(point["value"], 6)
    _check_result(result, rows=10**6, seeds=2)
    for broken in ({"target": 0.88}, {"intrinsic_dimension": 2048}, {"intrinsic_dimension": 8192},
                   {"intrinsic_dimension_interpolated": 5000.0}, {"intrinsic_dimension": None}):  # fmt: skip
        with pytest.raises(AssertionError):
            _check_result({**result, **broken}, rows=10**6, seeds=2)


@pytest.mark.slow
def test_command_on_a_model_with_a_new_head(tmp_path, capsys) -> None:
    """The user's path: a base checkpoint without a classification head (tiny Llama, its `score` head is
    new) on real data. Head fixed at a head-only run's optimum; output files written; a second command
    with the result present is refused; with overwrite it resumes from the points and trains nothing."""
    import json

    from conftest import save_tiny_model

    from adarank.cli import main

    save_tiny_model(tmp_path / "llama", llama=True)
    common = [f"model.name_or_path={tmp_path / 'llama'}", "train.max_steps=6", "train.batch_size=8",
              "data.max_train_samples=64", "data.max_eval_samples=32", "wandb.mode=disabled"]  # fmt: skip
    head_only = tmp_path / "probe"
    assert main(["train", *common, "adapter.target_modules=[]", "budget.schedule=constant", "budget.init_rank=1",
                 "budget.target_rank=1", f"output_dir={head_only}"]) == 0  # fmt: skip
    probe = json.loads((head_only / "metrics.json").read_text())["validation_accuracy"]
    out = tmp_path / "idim"
    args = ["intrinsic-dim", *common, "adapter.target_modules=[q_proj,v_proj]", f"output_dir={out}",
            f"intrinsic_dim.floor_run={head_only}", "intrinsic_dim.head=fixed", "intrinsic_dim.reference=1.0",
            "intrinsic_dim.min_dim=2", "intrinsic_dim.max_dim=32", "intrinsic_dim.grid_factor=4",
            "intrinsic_dim.seeds=2"]  # fmt: skip
    assert main(args) == 0
    result = json.loads((out / "intrinsic_dim.json").read_text())
    assert (result["floor"], result["reference"], result["grid"]) == (probe, 1.0, [2, 8, 32])
    assert result["subspace_size"] == 2 * (32 * 32 + 32 * 16)  # q_proj 32x32, v_proj 16x32 (one kv head)
    assert result["head"] == "fixed" and result["metric"] == "validation_accuracy"
    assert (out / "intrinsic_dim.png").stat().st_size > 5_000
    kinds = [p["kind"] for p in result["points"]]
    assert kinds.count("floor") == 1 and "reference" not in kinds and kinds.count("subspace") >= 1
    _check_result(result, rows=32, seeds=2)
    subspace = [p["value"] for p in result["points"] if p["kind"] == "subspace"]
    # the head fixed at the probe's and theta_d = 0 is the probe's model: a subspace run that trained nothing
    # would score the floor exactly
    assert all(value != probe for value in subspace), (probe, subspace)
    capsys.readouterr()
    assert main(args) == 2
    assert "already holds intrinsic_dim.json" in capsys.readouterr().err
    assert main([*args, "overwrite=true"]) == 0
    text = capsys.readouterr().out
    assert f"resuming from {len(result['points'])} measurement(s)" in text and "seed 0:" not in text
    assert json.loads((out / "intrinsic_dim.json").read_text()) == result


@pytest.mark.slow
def test_fixed_head_is_the_probes_and_frozen(tmp_path, monkeypatch) -> None:
    """head=fixed without floor_run: the floor trains the new head alone (it moves from its initialisation),
    and every subspace run starts from exactly that head, frozen, with only θ_d trainable. After a resume
    (the floor read from the points file) the head is trained again to the same values (same seed)."""
    import torch
    from conftest import save_tiny_model

    from adarank.analysis.subspace_runs import Runner

    save_tiny_model(tmp_path / "llama", llama=True)
    cfg = load_config(None, [f"model.name_or_path={tmp_path / 'llama'}", "train.max_steps=4", "train.batch_size=8",
                             "data.max_train_samples=32", "data.max_eval_samples=16", "intrinsic_dim.head=fixed",
                             "adapter.target_modules=[q_proj]", f"output_dir={tmp_path / 'out'}"],
                      schema=IntrinsicDimRunConfig)  # fmt: skip
    runner = Runner(cfg)
    assert runner.head_modules == ["score"]
    runner.floor()
    head = runner.head_state
    assert head is not None and set(head) == {"score.weight"}
    initial = runner._fresh(cfg.seed).score.weight
    assert not torch.equal(head["score.weight"], initial), "the probe trained the head"
    seen = {}

    def capture(model, learning_rate, seed, steps=True):  # noqa: ANN001, ANN202
        seen["head"] = model.score.weight.detach().clone()
        seen["trainable"] = [n for n, p in model.named_parameters() if p.requires_grad]
        return 0.5

    monkeypatch.setattr(runner, "_train", capture)
    runner.subspace(2, 1)
    assert torch.equal(seen["head"], head["score.weight"])
    assert len(seen["trainable"]) == 1 and seen["trainable"][0].endswith("coords")
    resumed = Runner(cfg)
    resumed.floor_head()
    assert resumed.head_state is not None and torch.equal(resumed.head_state["score.weight"], head["score.weight"])


def test_the_intrinsic_dim_section_is_that_commands_own(tmp_path) -> None:
    """`intrinsic_dim.*` is read, validated and written by `adarank intrinsic-dim` alone: a run's config has
    no such section, an override of it for another command is refused naming the command, and a YAML file
    that holds it (adarank 0.1 wrote it into every run's config.yaml) still loads for `adarank train`."""
    from dataclasses import fields

    from adarank.config import RunConfig, to_yaml

    assert "intrinsic_dim" not in {f.name for f in fields(RunConfig)}
    assert "intrinsic_dim" not in to_yaml(load_config(None, []))
    with pytest.raises(ConfigError) as refused:
        load_config(None, ["intrinsic_dim.min_dim=0"])
    assert refused.value.problems == [
        "command line: `intrinsic_dim.min_dim` is a key of `adarank intrinsic-dim`, which this command does not read."
    ]
    shared = tmp_path / "shared.yaml"
    shared.write_text("train:\n  max_steps: 50\nintrinsic_dim:\n  min_dim: 64\n")
    assert load_config(shared, []).train.max_steps == 50
    both = load_config(shared, [], schema=IntrinsicDimRunConfig)
    assert isinstance(both, IntrinsicDimRunConfig) and both.intrinsic_dim.min_dim == 64
    assert "min_dim: 64" in to_yaml(both)
