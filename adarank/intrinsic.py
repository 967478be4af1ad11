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

import torch

from adarank.config import ConfigError, RunConfig, to_yaml

POINTS_FILE = "intrinsic_dim_points.json"
RESULT_FILE = "intrinsic_dim.json"
PLOT_FILE = "intrinsic_dim.png"


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
        from adarank.rundir import write_json_atomic

        write_json_atomic(self.path, {"config": self.config_text, "points": [asdict(m) for m in self.items]})


def _config_text(cfg: RunConfig) -> str:
    """What determines the measurements (the output directory and overwrite flag do not)."""
    return to_yaml(replace(cfg, output_dir="", overwrite=False))


def intrinsic_dimension(cfg: RunConfig) -> dict[str, Any]:
    """Measure the intrinsic dimension of ``cfg``'s task over its target modules and write the output
    directory; returns the result (the contents of intrinsic_dim.json).

    Raises:
        ConfigError: the data, model or targets are invalid, or the output directory holds another result.
    """
    from adarank.rundir import OutputLock, write_json_atomic

    out = Path(cfg.output_dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(["adarank intrinsic-dim runs in one process; launch it without torchrun."])
    if (out / RESULT_FILE).exists() and not cfg.overwrite:
        raise ConfigError([f"output_dir `{out}` already holds {RESULT_FILE}; choose another or pass overwrite=true."])
    trainer = _Runner(cfg)  # loads and checks data and model before anything is written
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


def _measure(cfg: RunConfig, runner: _Runner, points: _Points) -> dict[str, Any]:
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


def _given_reference(cfg: RunConfig, metric: str) -> float | None:
    given = cfg.intrinsic_dim.reference
    if given is None:
        return None
    try:
        return float(given)
    except ValueError:
        return _run_metric(Path(given), metric, "intrinsic_dim.reference")


def _run_metric(run: Path, metric: str, key: str) -> float:
    metrics = json.loads((run / "metrics.json").read_text())
    if metric not in metrics:
        raise ConfigError([f"{key}: `{run}/metrics.json` has no `{metric}`; give a run of the same task and format."])
    return float(metrics[metric])


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


class _Runner:
    """Loads the task once and trains one configuration per call: the head alone (floor), the target
    weights in full (reference) or a random subspace of them."""

    def __init__(self, cfg: RunConfig):
        from adarank.data import load_task
        from adarank.models import load_model
        from adarank.run import check_chat_template, is_causal, targets_or_raise
        from adarank.tasks import answer_tokens, build_datasets

        self.cfg = cfg
        self.causal = is_causal(cfg)
        self.task = load_task(cfg.data)
        names = self.task.label_names
        self.tokenizer, model, self.head_modules = load_model(cfg.model, self.causal, len(names) or 2, names or None)
        targets_or_raise(model, cfg)
        check_chat_template(self.tokenizer, cfg)
        self.data = build_datasets(self.tokenizer, cfg, self.task)
        kind = cfg.intrinsic_dim.metric or (
            "loss" if cfg.data.format == "language_modeling" or not (
                cfg.data.format == "classification" or answer_tokens(self.tokenizer, cfg.data, self.task))
            else "accuracy"
        )  # fmt: skip
        if kind == "accuracy" and self.causal and not answer_tokens(self.tokenizer, cfg.data, self.task):
            raise ConfigError(["intrinsic_dim.metric=accuracy needs exact match: set data.max_answer_tokens."])
        self.metric = f"validation_{kind}"
        self.higher_is_better = kind == "accuracy"
        covered = self._covered(model)
        self.subspace_size, self.layer_scales = sum(covered.values()), len(covered)
        self.head_state: dict[str, torch.Tensor] | None = None

    def _covered(self, model: Any) -> dict[str, int]:
        from adarank.subspace import subspace_parameters

        head = self.head_modules if self.cfg.intrinsic_dim.head == "subspace" else []
        return {n: p.numel() for n, p in subspace_parameters(model, self._modules(model), head).items()}

    def _modules(self, model: Any) -> dict[str, Any]:
        from adarank.inject import select_modules

        return select_modules(model, self.cfg.adapter.target_modules)

    def _fresh(self, seed: int) -> Any:
        from transformers.utils import logging as hf_logging

        from adarank.models import load_model

        torch.manual_seed(seed)  # a new head's initialisation
        names = self.task.label_names
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the new-head notice was shown once, when the task was checked
        try:
            _, model, _ = load_model(self.cfg.model, self.causal, len(names) or 2, names or None)
        finally:
            hf_logging.set_verbosity(verbosity)
        return model

    def floor(self) -> float:
        if self.head_modules and self.cfg.intrinsic_dim.floor_run:
            run = Path(self.cfg.intrinsic_dim.floor_run)
            self.head_state = _head_from_run(run, self.head_modules)
            return _run_metric(run, self.metric, "intrinsic_dim.floor_run")
        model = self._fresh(self.cfg.seed)
        if not self.head_modules:  # a causal LM, or a head from the checkpoint: the untrained base
            return self._train(model, self.cfg.train.learning_rate, self.cfg.seed, steps=False)
        model.requires_grad_(False)
        for name in self.head_modules:
            model.get_submodule(name).requires_grad_(True)
        value = self._train(model, self.cfg.train.learning_rate, self.cfg.seed)
        self.head_state = {
            f"{m}.{n}": p.detach().clone()
            for m in self.head_modules
            for n, p in model.get_submodule(m).named_parameters()
        }
        return value

    def reference(self) -> float:
        model = self._fresh(self.cfg.seed)
        model.requires_grad_(False)
        for module in self._modules(model).values():
            module.weight.requires_grad_(True)
        for name in self.head_modules:
            model.get_submodule(name).requires_grad_(True)
        return self._train(model, self.cfg.intrinsic_dim.reference_learning_rate, self.cfg.seed)

    def subspace(self, dim: int, seed: int) -> float:
        from adarank.subspace import attach_subspace_, subspace_parameters

        idim = self.cfg.intrinsic_dim
        model = self._fresh(seed)
        head: list[str] = list(self.head_modules)
        if idim.head == "fixed" and self.head_modules:
            if self.head_state is None:  # the floor came from the points file: rebuild its head
                self.floor_head()
            assert self.head_state is not None
            missing = model.load_state_dict(self.head_state, strict=False).missing_keys
            assert not set(self.head_state) & set(missing)
            head = []
        parameters = subspace_parameters(model, self._modules(model), head)
        attach_subspace_(model, parameters, dim, nonzeros=idim.nonzeros, layer_scaling=idim.layer_scaling, seed=seed)
        return self._train(model, idim.learning_rate, seed)

    def floor_head(self) -> None:
        """The fixed head when the floor measurement was resumed rather than trained in this process."""
        if self.cfg.intrinsic_dim.floor_run:
            self.head_state = _head_from_run(Path(self.cfg.intrinsic_dim.floor_run), self.head_modules)
        else:
            self.floor()

    def _train(self, model: Any, learning_rate: float, seed: int, steps: bool = True) -> float:
        """Train ``model``'s trainable parameters (unless not ``steps``) and return the validation metric."""
        import tempfile

        from transformers import Trainer

        from adarank.run import collator, evaluate_splits, training_arguments
        from adarank.tasks import classification_accuracy, model_columns, training_rows

        cfg = replace(self.cfg, seed=seed, train=replace(self.cfg.train, learning_rate=learning_rate, eval_steps=None,
                                                         save_steps=None))  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="adarank-idim-") as scratch:
            args = training_arguments(cfg, Path(scratch), [])
            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=training_rows(self.data["train"], cfg.data),
                data_collator=collator(cfg, self.tokenizer),
                compute_metrics=None if self.causal else classification_accuracy,
            )
            if steps:
                trainer.train()
            if not self.causal:
                scores = trainer.evaluate(model_columns(self.data["validation"]), metric_key_prefix="validation")
            else:
                scores = evaluate_splits(model, None, self.tokenizer, cfg, self.task, self.data, ("validation",))
            return float(scores[self.metric])


def _head_from_run(run: Path, head_modules: list[str]) -> dict[str, torch.Tensor]:
    """The head a head-only run trained, from its native adapter export."""
    from adarank.export import ExportError, read_native, trained_tensors

    try:
        head = trained_tensors(*read_native(run / "adapter"))
    except ExportError as err:
        raise ConfigError([f"intrinsic_dim.floor_run: {err}"]) from err
    wanted = {k for k in head if k.rsplit(".", 1)[0] in head_modules}
    if not wanted:
        raise ConfigError([
            f"intrinsic_dim.floor_run `{run}` holds no trained head ({', '.join(head_modules)}); give a head-only run."
        ])  # fmt: skip
    return {k: head[k] for k in wanted}
