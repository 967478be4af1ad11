"""`adarank intrinsic-dim`: the smallest random subspace of the target modules' weights in which
fine-tuning reaches a fraction of the way from a floor to a reference (Li et al. 2018; Aghajanyan
et al. 2020), measured on the validation split.

The floor is the head trained alone (classification; its linear probe) or the untrained base (causal
LMs), so the measured point is not trivially d = 0 on a task the head already solves. The reference
is a full fine-tune of the same weights (or a given number or run). d is bisected on a geometric grid
with one seed per point; the two grid points around the crossing then get ``intrinsic_dim.seeds``
seeds and the crossing is decided on their means. Every measurement is appended to
``intrinsic_dim_points.json`` as it finishes, so a rerun of the same command resumes.

Output directory: ``intrinsic_dim.json`` (``intrinsic_dimension``, ``intrinsic_dimension_interpolated``,
``floor``, ``reference``, ``target``, ``metric``, ``points``, ...), ``intrinsic_dim.png``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from adarank.analysis.subspace_runs import Runner, run_metric
from adarank.config import HEAD_MODES, ConfigError, IntrinsicDimConfig, IntrinsicDimRunConfig, to_yaml
from adarank.io.rundir import OutputLock, write_json_atomic

POINTS_FILE = "intrinsic_dim_points.json"
RESULT_FILE = "intrinsic_dim.json"
PLOT_FILE = "intrinsic_dim.png"


def intrinsic_dim_problems(idim: IntrinsicDimConfig, data_format: str) -> list[str]:
    """Problems with the ``intrinsic_dim.*`` keys (`adarank intrinsic-dim`'s own section)."""
    problems = []
    if not 1 <= idim.min_dim <= idim.max_dim:
        problems.append(
            f"intrinsic_dim.min_dim ({idim.min_dim}) must be >= 1 and <= intrinsic_dim.max_dim ({idim.max_dim})."
        )
    if idim.grid_factor <= 1:
        problems.append(f"intrinsic_dim.grid_factor ({idim.grid_factor}) must be > 1, e.g. 2.")
    if not 0 < idim.fraction <= 1:
        problems.append(f"intrinsic_dim.fraction ({idim.fraction}) must be in (0, 1], e.g. 0.9.")
    if idim.reference is not None:
        try:
            given = float(idim.reference)
        except ValueError:
            if not (Path(idim.reference) / "metrics.json").is_file():
                problems.append(
                    f"intrinsic_dim.reference `{idim.reference}` is neither a number nor a run directory with "
                    "metrics.json; give e.g. 0.82, a finished run, or null to fine-tune in full first."
                )
        else:
            if not math.isfinite(given):
                problems.append(f"intrinsic_dim.reference ({idim.reference}) must be a finite number, e.g. 0.82.")
    if idim.floor_run is not None and not (Path(idim.floor_run) / "metrics.json").is_file():
        problems.append(
            f"intrinsic_dim.floor_run `{idim.floor_run}` is not a finished run (no metrics.json); give a head-only "
            "run's directory or null to train the head alone first."
        )
    if idim.head not in HEAD_MODES:
        problems.append(f"intrinsic_dim.head `{idim.head}` is not one of {', '.join(HEAD_MODES)}.")
    if idim.learning_rate <= 0 or idim.reference_learning_rate <= 0:
        problems.append("intrinsic_dim.learning_rate and intrinsic_dim.reference_learning_rate must be > 0.")
    if idim.nonzeros < 1 or idim.seeds < 1:
        problems.append(
            f"intrinsic_dim.nonzeros ({idim.nonzeros}) and intrinsic_dim.seeds ({idim.seeds}) must be >= 1."
        )
    if idim.metric is not None and idim.metric not in ("accuracy", "loss"):
        problems.append(f"intrinsic_dim.metric `{idim.metric}` is not one of accuracy, loss (or null).")
    if idim.metric == "accuracy" and data_format == "language_modeling":
        problems.append("intrinsic_dim.metric=accuracy: language_modeling has no accuracy; use loss.")
    return problems


@dataclass(frozen=True)
class Measurement:
    """One training run: ``kind`` floor | reference | subspace, at subspace dimension ``dim`` (0 otherwise)."""

    kind: str
    dim: int
    seed: int
    value: float
    seconds: float


def geometric_grid(min_dim: int, max_dim: int, factor: float) -> list[int]:
    """min_dim, min_dim·factor, min_dim·factor², ... (rounded, distinct) up to max_dim inclusive."""
    grid: list[int] = []
    step = 0
    while (value := round(min_dim * factor**step)) <= max_dim:
        if not grid or value > grid[-1]:
            grid.append(value)
        step += 1
    return grid


def target_value(floor: float, reference: float, fraction: float) -> float:
    """floor + fraction · (reference − floor): the value a subspace must reach (either direction)."""
    return floor + fraction * (reference - floor)


def reaches(value: float, target: float, higher_is_better: bool) -> bool:
    return value >= target if higher_is_better else value <= target


@dataclass(frozen=True)
class Crossing:
    """Where the grid crosses the target: ``above`` the smallest grid index whose seed mean reaches it
    (None: not within the grid), ``below`` the largest index under it that was measured (None: the first
    grid point already reaches it)."""

    above: int | None
    below: int | None


def find_crossing(
    grid: list[int], measure: Callable[[int, int], float], target: float, higher_is_better: bool, seeds: int
) -> Crossing:
    """Bisect ``grid`` for the smallest d whose mean over seeds reaches ``target``, assuming the metric
    improves with d. ``measure(d, seed)`` trains one run (callers cache it). One seed per point while
    bisecting; then ``seeds`` seeds at the bracketing points, moving the bracket while their means
    disagree with the one-seed verdicts.
    """

    def mean(index: int, count: int) -> float:
        return statistics.fmean(measure(grid[index], seed) for seed in range(count))

    def ok(index: int, count: int) -> bool:
        return reaches(mean(index, count), target, higher_is_better)

    last = len(grid) - 1
    if not ok(last, 1):
        return Crossing(None, last)
    below, above = -1, last  # below: not reached (or before the grid); above: reached
    while above - below > 1:
        middle = (below + above) // 2
        if ok(middle, 1):
            above = middle
        else:
            below = middle
    while True:  # confirm with all seeds; every move measures a new point with all seeds
        if not ok(above, seeds):
            if above == last:
                return Crossing(None, last)
            below, above = above, above + 1
            continue
        if below >= 0 and ok(below, seeds):
            below, above = below - 1, below
            continue
        return Crossing(above, below if below >= 0 else None)


def interpolated_dimension(low: tuple[int, float], high: tuple[int, float], target: float) -> float:
    """The d where the line through (log d, value) of the bracketing points meets ``target``."""
    (d0, v0), (d1, v1) = low, high
    if v1 == v0:
        return float(d1)
    share = min(max((target - v0) / (v1 - v0), 0.0), 1.0)
    return math.exp(math.log(d0) + share * (math.log(d1) - math.log(d0)))


class _Points:
    """The measurements of one configuration, persisted after each (resume by rerunning the command)."""

    def __init__(self, path: Path, config_text: str):
        self.path, self.config_text = path, config_text
        self.items: list[Measurement] = []
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("config") == config_text:
                self.items = [Measurement(**m) for m in saved["points"]]
                print(f"adarank: resuming from {len(self.items)} measurement(s) in {path}")

    def get(self, kind: str, dim: int, seed: int) -> Measurement | None:
        return next((m for m in self.items if (m.kind, m.dim, m.seed) == (kind, dim, seed)), None)

    def add(self, measurement: Measurement) -> None:
        self.items.append(measurement)

        write_json_atomic(self.path, {"config": self.config_text, "points": [asdict(m) for m in self.items]})


def _config_text(cfg: IntrinsicDimRunConfig) -> str:
    """What determines the measurements (the output directory and overwrite flag do not)."""
    return to_yaml(replace(cfg, output_dir="", overwrite=False))


def intrinsic_dimension(cfg: IntrinsicDimRunConfig) -> dict[str, Any]:
    """Measure the intrinsic dimension of ``cfg``'s task over its target modules and write the output
    directory; returns the result (the contents of intrinsic_dim.json).

    Raises:
        ConfigError: the data, model or targets are invalid, or the output directory holds another result.
    """

    out = Path(cfg.output_dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(["adarank intrinsic-dim runs in one process; launch it without torchrun."])
    if (out / RESULT_FILE).exists() and not cfg.overwrite:
        raise ConfigError([f"output_dir `{out}` already holds {RESULT_FILE}; choose another or pass overwrite=true."])
    trainer = Runner(cfg)  # loads and checks data and model before anything is written
    with OutputLock(out):
        points = _Points(out / POINTS_FILE, _config_text(cfg))
        result = _measure(cfg, trainer, points)
        _plot(result, out / PLOT_FILE)
        write_json_atomic(out / RESULT_FILE, result)
    print(_summary(result))
    print(f"output: {out / RESULT_FILE}, {out / PLOT_FILE}")
    return result


def _cached(points: _Points, kind: str, dim: int, seed: int, run: Callable[[], float], label: str) -> float:
    found = points.get(kind, dim, seed)
    if found is not None:
        return found.value
    start = time.perf_counter()
    value = run()
    seconds = time.perf_counter() - start
    points.add(Measurement(kind, dim, seed, value, round(seconds, 1)))
    print(f"adarank intrinsic-dim: {label} seed {seed}: {value:.4f} ({seconds:.0f} s)", flush=True)
    return value


def _measure(cfg: IntrinsicDimRunConfig, runner: Runner, points: _Points) -> dict[str, Any]:
    idim = cfg.intrinsic_dim
    floor = _cached(points, "floor", 0, cfg.seed, runner.floor, "floor")
    reference = _given_reference(cfg, runner.metric)
    if reference is None:
        reference = _cached(points, "reference", 0, cfg.seed, runner.reference, "full fine-tune (reference)")
    target = target_value(floor, reference, idim.fraction)
    higher = runner.higher_is_better
    if not (reference > floor if higher else reference < floor):
        raise ConfigError([
            f"the reference ({reference:.4f}) is not better than the floor ({floor:.4f}) on {runner.metric}: there is "
            "no gap to measure; check intrinsic_dim.reference or train the reference longer."
        ])  # fmt: skip
    grid = geometric_grid(idim.min_dim, idim.max_dim, idim.grid_factor)
    print(f"adarank intrinsic-dim: floor {floor:.4f}, reference {reference:.4f}, target {target:.4f} "
          f"({runner.metric}); grid {grid[0]}..{grid[-1]} ({len(grid)} points)")  # fmt: skip

    def measure(dim: int, seed: int) -> float:
        return _cached(
            points, "subspace", dim, cfg.seed + seed, lambda: runner.subspace(dim, cfg.seed + seed), f"d = {dim}"
        )

    crossing = find_crossing(grid, measure, target, higher, idim.seeds)
    means = _means(points.items)
    found = grid[crossing.above] if crossing.above is not None else None
    interpolated = None
    if found is not None:
        interpolated = float(found)
        if crossing.below is not None:
            low = grid[crossing.below]
            interpolated = interpolated_dimension((low, means[low]), (found, means[found]), target)
    return {
        "metric": runner.metric,
        "higher_is_better": higher,
        "fraction": idim.fraction,
        "floor": floor,
        "reference": reference,
        "target": target,
        "intrinsic_dimension": found,
        "intrinsic_dimension_interpolated": interpolated,
        "grid": grid,
        "subspace_size": runner.subspace_size,
        "layer_scales": runner.layer_scales if idim.layer_scaling else 0,
        "head": idim.head if runner.head_modules else "none",
        "projection": f"sparse, {idim.nonzeros} nonzero(s) per weight",
        "points": [asdict(m) for m in points.items],
    }


def _means(items: list[Measurement]) -> dict[int, float]:
    dims = sorted({m.dim for m in items if m.kind == "subspace"})
    return {d: statistics.fmean(m.value for m in items if m.kind == "subspace" and m.dim == d) for d in dims}


def _given_reference(cfg: IntrinsicDimRunConfig, metric: str) -> float | None:
    given = cfg.intrinsic_dim.reference
    if given is None:
        return None
    try:
        return float(given)
    except ValueError:
        return run_metric(Path(given), metric, "intrinsic_dim.reference")


def _summary(result: dict[str, Any]) -> str:
    name = f"d{round(result['fraction'] * 100)}"
    found = result["intrinsic_dimension"]
    head = (
        f"{name} = {found} (interpolated {result['intrinsic_dimension_interpolated']:.0f})"
        if found is not None
        else f"{name} > {result['grid'][-1]}: the target was not reached within the grid; raise intrinsic_dim.max_dim"
    )
    lines = [
        head,
        f"  {result['metric']}: floor {result['floor']:.4f}, reference {result['reference']:.4f}, "
        f"target {result['target']:.4f}; subspace over {result['subspace_size']:,} weights",
        "  d        mean     seeds",
    ]
    for dim, value in _means([Measurement(**m) for m in result["points"]]).items():
        seeds = sum(1 for m in result["points"] if m["kind"] == "subspace" and m["dim"] == dim)
        lines.append(f"  {dim:<8} {value:.4f}   {seeds}")
    return "\n".join(lines)


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    subspace = [m for m in result["points"] if m["kind"] == "subspace"]
    ax.scatter([m["dim"] for m in subspace], [m["value"] for m in subspace], s=14, alpha=0.5, label="one seed")
    means = _means([Measurement(**m) for m in result["points"]])
    ax.plot(list(means), list(means.values()), marker="o", label="mean over seeds")
    fraction = round(result["fraction"] * 100)
    lines = (("floor", ":", "floor (head alone / untrained)"), ("reference", "--", "reference"),
             ("target", "-", f"target: {fraction}% of the way"))  # fmt: skip
    for key, style, label in lines:
        ax.axhline(result[key], linestyle=style, color="grey", linewidth=1, label=f"{label} {result[key]:.3f}")
    if result["intrinsic_dimension_interpolated"] is not None:
        found = result["intrinsic_dimension_interpolated"]
        name = f"d{round(result['fraction'] * 100)}"
        ax.axvline(found, color="tab:red", linewidth=1, label=f"{name} ≈ {found:.0f}")
    ax.set_xscale("log")
    ax.set_xlabel("subspace dimension d (trainable coordinates)")
    ax.set_ylabel(result["metric"].replace("_", " "))
    ax.set_title(f"Intrinsic dimension: random subspace over {result['subspace_size']:,} weights")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
