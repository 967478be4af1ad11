"""Shrink: cut adapters down to the triplets their fixed forward masks keep.

Once the final phase fixes the masks, the pruned triplets can never come back, yet they would still be
computed, stored and optimized until the end. ``cut_to_masks_`` slices each adapter's P, lambda and Q
(new, smaller parameters) and its optimizer state to the kept triplets, turns every adapter left with
none back into its plain base layer (recorded as pruned, so exports list it at rank 0), and swaps the
new parameters into the optimizer, so the final phase trains at the cost of b(T). The scaling
(alpha / init_rank) is kept, so the model computes exactly what it did.

The allocator owns when this happens (``RankAllocator.step`` at the final masking step, or
``RankAllocator.shrink_``); this module only edits modules, tensors and optimizer state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

import torch
from torch import nn

from adarank.core.inject import RECORD_ATTR, TrainedRecord
from adarank.core.layers import SVDLinear

TRIPLET_DIM = {"left_vectors": 1, "singular_values": 0, "right_vectors": 0}
"""The dimension along which each adapter part (and its score EMAs) is indexed by triplet."""


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _swap_in_optimizer(optimizer: Any, old: nn.Parameter, new: nn.Parameter, keep: torch.Tensor, dim: int) -> None:
    """Put ``new`` where ``old`` was in the optimizer's groups, with ``old``'s state sliced to ``keep``."""
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state is not None:
        index = keep.nonzero().squeeze(1).to(old.device)
        optimizer.state[new] = {
            k: v.index_select(dim, index).contiguous() if torch.is_tensor(v) and v.shape == old.shape else v
            for k, v in state.items()
        }


def _drop_from_optimizer(optimizer: Any, param: nn.Parameter) -> None:
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if p is not param]
    optimizer.state.pop(param, None)


@torch.no_grad()
def shrink_adapter_(adapter: SVDLinear, keep: torch.Tensor, optimizer: Any = None) -> None:
    """Replace the adapter's P, lambda, Q and mask by their ``keep`` triplets (at least one), slicing
    the optimizer state along; the scaling is unchanged."""
    index = keep.nonzero().squeeze(1).to(adapter.singular_values.device)
    for part, dim in TRIPLET_DIM.items():
        old = getattr(adapter, part)
        new = nn.Parameter(old.detach().index_select(dim, index).contiguous(), requires_grad=old.requires_grad)
        setattr(adapter, part, new)
        if optimizer is not None:
            _swap_in_optimizer(optimizer, old, new, keep, dim)
    adapter.rank_mask = adapter.rank_mask.index_select(0, index).contiguous()


def cut_to_masks_(
    model: nn.Module, adapters: Mapping[str, SVDLinear], keep: Mapping[str, torch.Tensor], optimizer: Any = None
) -> list[str]:
    """Cut every adapter of ``adapters`` (modules of ``model``) to its ``keep`` triplets, in the model and
    in ``optimizer``; adapters that keep none become their plain base layer again and are recorded as
    pruned in the model's ``TrainedRecord``. Returns the names of those removed adapters."""
    record = getattr(model, RECORD_ATTR, TrainedRecord())
    pruned = dict(record.pruned_modules)
    removed = []
    for name, adapter in adapters.items():
        kept = keep[name].to(torch.bool)
        if kept.all():
            continue
        if kept.any():
            shrink_adapter_(adapter, kept, optimizer)
            continue
        parent, child = _parent(model, name)
        setattr(parent, child, adapter.base)
        pruned[name] = (adapter.out_features, adapter.in_features, adapter.scaling)
        removed.append(name)
        if optimizer is not None:
            for part in TRIPLET_DIM:
                _drop_from_optimizer(optimizer, getattr(adapter, part))
    setattr(model, RECORD_ATTR, replace(record, pruned_modules=pruned))
    return removed


def slice_scores(state: Mapping[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """An adapter's score EMAs (``<part>.<kind>``) cut to its ``keep`` triplets."""
    index = keep.nonzero().squeeze(1)
    return {
        key: tensor.index_select(TRIPLET_DIM[key.split(".")[0]], index.to(tensor.device)).contiguous()
        for key, tensor in state.items()
    }


def first_triplets(adapters: Mapping[str, SVDLinear], ranks: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Keep-masks of each adapter's first ``ranks[name]`` triplets (all of them for a module not in
    ``ranks``): the shapes of a shrunk model, rebuilt before its checkpoint's values load into them."""
    keep = {}
    for name, adapter in adapters.items():
        kept = torch.zeros(adapter.rank, dtype=torch.bool)
        kept[: int(ranks.get(name, adapter.rank))] = True
        keep[name] = kept
    return keep


class Shrinkable(Protocol):
    """What ``shrink_`` needs of an allocator (``adarank.core.allocator.RankAllocator``)."""

    def shrink_(self, model: nn.Module, optimizer: Any = None) -> dict[str, int]: ...


def shrink_(model: nn.Module, allocator: Shrinkable, optimizer: Any = None) -> dict[str, int]:
    """Cut the allocator's adapters to their fixed masks now (``RankAllocator.shrink_``); a no-op once
    they are cut. ``RankAllocator.step(step, optimizer, model)`` does this itself with ``budget.shrink``.
    Returns the live rank of every module, pruned ones at 0.

    Raises:
        RuntimeError: the masks are not fixed yet (shrink only in the final phase).
    """
    return allocator.shrink_(model, optimizer)
