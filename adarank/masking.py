"""Masking primitives of the allocator: pick the best triplets under a budget, zero the pruned ones and
reset their optimizer state. Pure functions of tensors (and an optimizer's state); no schedule, no state."""

from __future__ import annotations

from typing import Any

import torch

from adarank.layers import SVDLinear
from adarank.sharding import local, local_rows


def select_top(
    scores: torch.Tensor,
    budget: int,
    eligible: torch.Tensor,
    costs: torch.Tensor | None = None,
    per_cost: bool = False,
) -> torch.Tensor:
    """Boolean mask keeping the highest eligible scores while their total cost fits in ``budget``.

    Without ``costs`` every triplet costs 1: exactly the ``budget`` best are kept. With costs the
    best-first prefix whose cumulative cost is <= ``budget`` is kept; with ``per_cost`` too, triplets
    are ranked by score / cost and each one that still fits is kept (a greedy fill: one that does not
    fit is skipped, not the end). Ties break deterministically toward the lower index (adapter order,
    then triplet order).
    """
    minus_inf = torch.tensor(float("-inf"), device=scores.device)
    value = scores / costs if costs is not None and per_cost else scores
    order = torch.argsort(value.where(eligible, minus_inf), descending=True, stable=True)
    keep = torch.zeros_like(eligible)
    if costs is None:
        assert int(eligible.sum()) >= budget, "budget exceeds the eligible triplets"
        keep[order[:budget]] = True
    elif per_cost:
        left, allowed = budget, eligible.tolist()
        for index, cost in zip(order.tolist(), costs[order].tolist(), strict=True):
            if cost <= left and allowed[index]:
                keep[index] = True
                left -= cost
    else:
        fits = torch.cumsum(costs[order], 0) <= budget
        keep[order[fits]] = True
        keep &= eligible
    return keep


def reset_optimizer_state_(optimizer: Any, adapter: SVDLinear, pruned: torch.Tensor) -> None:
    """Zero the optimizer state (e.g. Adam moments) of the ``pruned`` triplets of ``adapter``:
    entries of lambda, columns of P and rows of Q (mutates ``optimizer.state``). On FSDP2-sharded
    state each process zeroes what its shard holds of them (no communication)."""
    for param, dim in ((adapter.singular_values, 0), (adapter.left_vectors, 1), (adapter.right_vectors, 0)):
        held = pruned[local_rows(param)] if dim == 0 else pruned  # lambda and Q are sharded by triplet
        index = held.nonzero().squeeze(1)
        for value in optimizer.state.get(param, {}).values():
            if torch.is_tensor(value) and value.shape == param.shape:
                local(value).index_fill_(dim, index.to(local(value).device), 0)


def zero_pruned_(adapter: SVDLinear, kept: torch.Tensor) -> None:
    """Set lambda of every triplet not ``kept`` to 0 (on this process's shard under FSDP2)."""
    values = adapter.singular_values
    local(values.data)[~kept[local_rows(values)].to(local(values).device)] = 0
