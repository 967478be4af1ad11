"""Find target modules, wrap them in SVD adapters, and leave only adapters (and heads) trainable."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from adarank.layers import LINEAR_TYPES, SVDLinear, linear_features

ALL_LINEAR = "all-linear"
_BLOCK_INDEX = re.compile(r"\.\d+\.")


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


def select_modules(model: nn.Module, targets: Sequence[str], linear_only: bool = True) -> dict[str, nn.Module]:
    """Modules of ``model`` named by ``targets`` (suffixes, `re:` regexes or `all-linear`).

    Raises:
        ValueError: if a target matches nothing, or (``linear_only``) matches a non-linear module;
            the message lists the candidate linear module names.
    """
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
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for param in model.parameters():
        param.requires_grad_(False)
    for name, module in targets.items():
        _set_module(model, name, SVDLinear(module, rank, alpha, dropout, generator))
    for module in train_in_full.values():
        for param in module.parameters():
            param.requires_grad_(True)
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
