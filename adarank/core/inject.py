"""Find target modules, wrap them in SVD adapters, and leave only adapters (and heads) trainable."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from adarank.core.families import expand_targets
from adarank.core.layers import LINEAR_TYPES, SVDLinear, linear_features

ALL_LINEAR = "all-linear"
_BLOCK_INDEX = re.compile(r"\.\d+\.")
RECORD_ATTR = "adarank_record"


@dataclass(frozen=True)
class TrainedRecord:
    """What adarank trains on a model besides its live adapters, recorded once where the adapters are
    built (``inject_adapters``) or loaded (``load_adapter``). Exports read this record, never the
    ``requires_grad`` flags, which loading or user code may set otherwise (issue 13)."""

    trained_parameters: tuple[str, ...] = ()
    """Full names of the parameters trained in full (e.g. a new classification head), sorted."""
    pruned_modules: Mapping[str, tuple[int, int, float]] = field(default_factory=dict)
    """Targeted modules loaded at rank 0, left plain: name -> (d_out, d_in, scaling), so a re-export
    lists them as the original export did."""


def trained_record(model: nn.Module) -> TrainedRecord:
    """The record ``inject_adapters`` / ``load_adapter`` left on ``model`` (empty if neither ran).

    Warns when a parameter outside the adapters is trainable but not recorded: it would not be
    exported; name its module in ``modules_to_save`` so it is.
    """
    record = getattr(model, RECORD_ATTR, None)
    if not isinstance(record, TrainedRecord):
        record = TrainedRecord()
    inside = {id(p) for a in find_adapters(model).values() for p in a.parameters()}
    recorded = set(record.trained_parameters)
    stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in inside and n not in recorded]
    if stray:
        warnings.warn(
            f"{len(stray)} trainable parameter(s) outside the adapters are not recorded as trained and will not be "
            f"exported (e.g. `{stray[0]}`); pass their modules as modules_to_save to inject_adapters.",
            stacklevel=3,
        )
    return record


def _matches(name: str, target: str) -> bool:
    """Dot-bounded suffix match, or a full regex match for targets written `re:<regex>`.

    Note the suffix trap: `output.dense` matches BERT's `attention.output.dense` too; use
    `re:.*layer\\.\\d+\\.output\\.dense` to pick the FFN output alone.
    """
    if target.startswith("re:"):
        return re.fullmatch(target[3:], name) is not None
    return name == target or name.endswith("." + target)


def _candidates(model: nn.Module) -> str:
    """Linear module names with block indices folded, e.g. `encoder.layer.<i>.attention.self.query`."""
    names = {_BLOCK_INDEX.sub(".<i>.", n) for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES)}
    return ", ".join(sorted(names)) or "(none)"


def find_adapters(model: nn.Module) -> dict[str, SVDLinear]:
    """All SVD adapters in ``model``, by module name, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SVDLinear)}


def model_type(model: nn.Module) -> str | None:
    """The transformers ``config.model_type`` of ``model`` (None for a model without one)."""
    return getattr(getattr(model, "config", None), "model_type", None)


def select_modules(model: nn.Module, targets: Sequence[str], linear_only: bool = True) -> dict[str, nn.Module]:
    """Modules of ``model`` named by ``targets`` (suffixes, `re:` regexes, `all-linear`, or `auto`: the
    attention projections of the model's family, ``adarank.core.families``).

    Raises:
        ValueError: if a target matches nothing, or (``linear_only``) matches a non-linear module;
            the message lists the candidate linear module names. `auto` on an unknown family.
    """
    try:
        targets = expand_targets(targets, model_type(model))
    except ValueError as err:
        raise ValueError(f"{err}. Linear modules in this model: {_candidates(model)}.") from None
    problems: list[str] = []
    selected: dict[str, nn.Module] = {}
    named = [(n, m) for n, m in model.named_modules() if n]
    for target in targets:
        if target == ALL_LINEAR:
            hits = [(n, m) for n, m in named if isinstance(m, LINEAR_TYPES) and _BLOCK_INDEX.search(n)]
        else:
            hits = [(n, m) for n, m in named if _matches(n, target)]
        if not hits:
            problems.append(f"`{target}` matches no module")
        bad = [n for n, m in hits if linear_only and not isinstance(m, LINEAR_TYPES)]
        if bad:
            problems.append(f"`{target}` matches non-linear module(s) {', '.join(bad[:3])}")
        selected.update((n, m) for n, m in hits if n not in bad)
    if problems:
        raise ValueError(
            "; ".join(problems) + f". Linear modules in this model: {_candidates(model)}. Name them by "
            "dot-bounded suffix (e.g. `query`), by `re:<regex>` on the full name, or use `all-linear`."
        )
    return selected


def module_shapes(model: nn.Module, targets: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(d_out, d_in) of every module ``targets`` select (works on a meta-device skeleton).

    Raises:
        ValueError: as ``select_modules``.
    """
    shapes = {}
    for name, module in select_modules(model, targets).items():
        d_in, d_out = linear_features(module)
        shapes[name] = (d_out, d_in)
    return shapes


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def inject_adapters(
    model: nn.Module,
    target_modules: Sequence[str],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    modules_to_save: Sequence[str] = (),
    seed: int | None = None,
) -> dict[str, SVDLinear]:
    """Wrap every target module of ``model`` in an ``SVDLinear`` in place; freeze everything else.

    Args:
        model: the model to adapt (modified in place).
        target_modules: suffixes, `re:<regex>` or `all-linear` (see ``select_modules``).
        rank: initial rank of every adapter (budget.init_rank).
        alpha: scaling numerator (s = alpha / rank).
        dropout: dropout on the adapter input.
        modules_to_save: modules trained in full (e.g. a new classification head).
        seed: seed for the initial P and Q (default: torch's global generator).

    Returns:
        The adapters by module name, in model order.

    Raises:
        ValueError: a target matches nothing or a non-linear module, or the model already has adapters.
    """
    if find_adapters(model):
        raise ValueError("this model already has adarank adapters; inject them into a fresh base model.")
    targets = select_modules(model, target_modules)
    train_in_full = select_modules(model, modules_to_save, linear_only=False) if modules_to_save else {}
    overlap = [t for t in targets if any(t == m or t.startswith(m + ".") for m in train_in_full)]
    if overlap:
        raise ValueError(
            f"`{overlap[0]}` is both adapted (target_modules) and trained in full (modules_to_save); choose one."
        )
    trained = [n for m in train_in_full.values() for n in _parameter_names(model, m)]
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return build_adapters(model, dict.fromkeys(targets, rank), alpha, dropout, trained, generator=generator)


def _parameter_names(model: nn.Module, module: nn.Module) -> list[str]:
    """Full names, in ``model``, of ``module``'s parameters (tied ones under every name they have)."""
    own = {id(p) for p in module.parameters()}
    return [n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in own]


def build_adapters(
    model: nn.Module,
    ranks: Mapping[str, int],
    alpha: float,
    dropout: float,
    trained_parameters: Sequence[str],
    scalings: Mapping[str, float] | None = None,
    generator: torch.Generator | None = None,
    pruned_modules: Mapping[str, tuple[int, int, float]] | None = None,
) -> dict[str, SVDLinear]:
    """The one way adapters are built, fresh or loaded: freeze ``model``, wrap each module in ``ranks``
    in an ``SVDLinear`` of that rank, make ``trained_parameters`` trainable and record them.

    Args:
        model: the model (modified in place); module names in ``ranks`` must exist.
        ranks: module name -> rank (>= 1).
        alpha, dropout: as for ``SVDLinear``.
        trained_parameters: full names of parameters trained in full (e.g. the head).
        scalings: module name -> scaling, for loaded adapters (default alpha / rank).
        generator: random generator for the initial P and Q.
        pruned_modules: targeted modules left plain at rank 0 (see ``TrainedRecord``).
    """
    modules = dict(model.named_modules())
    params = dict(model.named_parameters(remove_duplicate=False))
    for param in model.parameters():
        param.requires_grad_(False)
    for name, rank in ranks.items():
        scaling = None if scalings is None else scalings[name]
        _set_module(model, name, SVDLinear(modules[name], rank, alpha, dropout, generator, scaling=scaling))
    for name in trained_parameters:
        params[name].requires_grad_(True)
    record = TrainedRecord(tuple(sorted(set(trained_parameters))), dict(pruned_modules or {}))
    setattr(model, RECORD_ATTR, record)
    return find_adapters(model)


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_live_parameters(model: nn.Module) -> int:
    """Trainable parameters that still matter: live triplets (d_in + d_out + 1 each) plus every
    trainable parameter outside the adapters."""
    adapters = find_adapters(model)
    adapter_params = {id(p) for a in adapters.values() for p in a.parameters()}
    outside = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in adapter_params)
    live = sum(a.live_rank() * a.triplet_cost for a in adapters.values())
    return outside + live
