"""Shrink: when the final phase fixes the masks, cut every adapter down to its live triplets.

From then on the pruned triplets can never come back, yet they would still be computed, stored and
optimized until the end. ``shrink_`` slices each adapter's P, lambda and Q (new, smaller parameters)
and its optimizer state to the live triplets, turns every adapter left with no live triplet back into
its plain base layer, and swaps the new parameters into the optimizer, so the final phase trains at
the cost of b(T). The scaling (alpha / init_rank) is kept, so the model computes exactly what it did.

The score EMAs are no longer needed once the masks are fixed (the final phase never masks again);
they are sliced along, so a checkpoint holds only live triplets. ``shrink_to_ranks_`` rebuilds the
shrunk shapes on a fresh model before a checkpoint taken after the shrink is loaded into it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from adarank.inject import RECORD_ATTR, TrainedRecord
from adarank.layers import SVDLinear

_TRIPLET_DIM = {"left_vectors": 1, "singular_values": 0, "right_vectors": 0}


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


@torch.no_grad()
def shrink_adapter_(adapter: SVDLinear, keep: torch.Tensor, optimizer: Any = None) -> None:
    """Replace the adapter's P, lambda, Q and mask by their ``keep`` triplets (at least one), slicing
    the optimizer state along; the scaling is unchanged."""
    index = keep.nonzero().squeeze(1).to(adapter.singular_values.device)
    for part, dim in _TRIPLET_DIM.items():
        old = getattr(adapter, part)
        new = nn.Parameter(old.detach().index_select(dim, index).contiguous(), requires_grad=old.requires_grad)
        setattr(adapter, part, new)
        if optimizer is not None:
            _swap_in_optimizer(optimizer, old, new, keep, dim)
    adapter.rank_mask = adapter.rank_mask.index_select(0, index).contiguous()


def shrink_(model: nn.Module, allocator: Any, optimizer: Any = None) -> dict[str, int]:
    """Cut every adapter of ``allocator`` to the triplets its forward mask keeps, in ``model`` and in
    ``optimizer``; adapters with none left become their plain base layer again (recorded as pruned, so
    exports list them at rank 0). Returns the live rank of every module, pruned ones at 0.

    Raises:
        RuntimeError: the masks are not fixed yet (shrink only in the final phase).
    """
    if not allocator.finalized:
        raise RuntimeError("shrink only after the final masks are fixed (the final phase of the schedule).")
    keep = {name: adapter.rank_mask.bool() for name, adapter in allocator.adapters.items()}
    return shrink_to_masks_(model, allocator, keep, optimizer)


def shrink_to_masks_(
    model: nn.Module, allocator: Any, keep: Mapping[str, torch.Tensor], optimizer: Any = None
) -> dict[str, int]:
    """``shrink_`` with the kept triplets given per adapter (the forward masks, or the first k triplets
    when rebuilding shapes before loading a checkpoint)."""
    record = getattr(model, RECORD_ATTR, TrainedRecord())
    pruned = dict(record.pruned_modules)
    live: dict[str, SVDLinear] = {}
    for name, adapter in allocator.adapters.items():
        kept = keep[name].to(torch.bool)
        if kept.all():
            live[name] = adapter
            continue
        if kept.any():
            shrink_adapter_(adapter, kept, optimizer)
            live[name] = adapter
        else:
            parent, child = _parent(model, name)
            setattr(parent, child, adapter.base)
            pruned[name] = (adapter.out_features, adapter.in_features, adapter.scaling)
            if optimizer is not None:
                for part in _TRIPLET_DIM:
                    _drop_from_optimizer(optimizer, getattr(adapter, part))
        if name in allocator.scores:
            allocator.scores[name] = _slice_scores(allocator.scores[name], kept) if kept.any() else None
    allocator.scores = {n: s for n, s in allocator.scores.items() if s is not None}
    setattr(model, RECORD_ATTR, replace(record, pruned_modules=pruned))
    allocator.remove_adapters([n for n in allocator.adapters if n not in live])
    allocator.shrunk = True
    return allocator.ranks()


def shrink_to_ranks_(model: nn.Module, allocator: Any, ranks: Mapping[str, int]) -> None:
    """Give a freshly built model the shapes of a shrunk one: each adapter keeps its first ``ranks[name]``
    triplets (their values are then overwritten by the checkpoint) and rank-0 ones become plain layers.
    No optimizer: it is built afterwards, from the shrunk parameters."""
    keep = {}
    for name, adapter in allocator.adapters.items():
        kept = torch.zeros(adapter.rank, dtype=torch.bool)
        kept[: int(ranks.get(name, adapter.rank))] = True
        keep[name] = kept
    shrink_to_masks_(model, allocator, keep)


def _drop_from_optimizer(optimizer: Any, param: nn.Parameter) -> None:
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if p is not param]
    optimizer.state.pop(param, None)


def _slice_scores(state: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    index = keep.nonzero().squeeze(1)
    out = {}
    for key, tensor in state.items():
        dim = _TRIPLET_DIM[key.split(".")[0]]
        out[key] = tensor.index_select(dim, index.to(tensor.device)).contiguous()
    return out
