"""Masking primitives of the allocator: pick the best triplets under a budget, zero the pruned ones and
reset their optimizer state, count the live ones. Functions of tensors (and an optimizer's state); the
allocator (``adarank.core.allocator``) decides when.

Masking semantics:
- default (the paper's): a masking step zeroes the pruned lambda; they may regrow until the next
  masking step. The forward mask ``rank_mask`` stays 1 during the decay.
- strict: the forward mask is written whenever b(t) falls below the live rank (every step of the
  decay, mask_interval aside), so the live rank never exceeds b(t). Pruned triplets are dead for
  good: they get no task gradient, and only live triplets compete, so masks only shrink.
- ``reset_pruned`` (default mode): a masking step also resets the pruned triplets' optimizer state.
- both: at the start of the final phase the mask is written and fixed, so the trained model has
  exactly b(T) live triplets and an export equals it. Whenever a triplet's forward mask turns 0
  its lambda is zeroed and its optimizer state (P column, lambda, Q row) reset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from adarank.core.layers import SVDLinear
from adarank.core.schedule import BudgetPlan, budget_at
from adarank.core.sharding import all_reduce_sum_, any_sharded, local, local_rows


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


@torch.no_grad()
def live_count_tensor(adapters: list[SVDLinear]) -> torch.Tensor:
    """Each adapter's live triplets (lambda * mask nonzero) as one tensor on the adapters' device (no
    host sync); on FSDP2-sharded adapters each process counts its own triplets and one all_reduce sums
    the counts."""
    if not adapters:
        return torch.zeros(0, dtype=torch.int64)
    values = [a.singular_values for a in adapters]
    per_adapter = torch.stack(
        [
            torch.count_nonzero(local(v) * a.rank_mask[local_rows(v)].to(local(v).device))
            for v, a in zip(values, adapters, strict=True)
        ]
    )
    if any_sharded(values):
        all_reduce_sum_(per_adapter)
    return per_adapter


def live_counts(adapters: list[SVDLinear]) -> list[int]:
    """``live_count_tensor`` read on the host: one sync for all adapters."""
    return [int(n) for n in live_count_tensor(adapters).tolist()]


@torch.no_grad()
def apply_masks_(
    adapters: list[SVDLinear], keep: Sequence[torch.Tensor], write_masks: bool, reset_pruned: bool, optimizer: Any
) -> None:
    """Zero the lambda of every triplet not in ``keep`` (one boolean per triplet, per adapter). Without
    ``write_masks`` (the paper's decay) pruned triplets may regrow, from the gradient rather than momentum
    when ``reset_pruned`` resets their optimizer state; with it (strict mode, the final phase) the forward
    mask is written too, and the optimizer state of every triplet whose mask turns 0 is reset."""
    for adapter, kept in zip(adapters, keep, strict=True):
        mask = adapter.rank_mask.bool()
        zero_pruned_(adapter, kept)
        if reset_pruned and optimizer is not None and not write_masks:
            reset_optimizer_state_(optimizer, adapter, ~kept)
        if write_masks:
            turned_off = mask & ~kept
            adapter.rank_mask.copy_(kept.to(adapter.rank_mask.dtype))
            if optimizer is not None and turned_off.any():
                reset_optimizer_state_(optimizer, adapter, turned_off)


def trace_point(adapters: list[SVDLinear], plan: BudgetPlan | None, step: int) -> dict[str, int]:
    """b(step) in the plan's unit, and the live rank (triplets with lambda * mask nonzero) in triplets
    and in parameters (``live_counts``: one host sync for all adapters)."""
    active = [(n, a.triplet_cost) for n, a in zip(live_counts(adapters), adapters, strict=True)]
    return {
        "step": step,
        "budget": budget_at(step, plan) if plan is not None else 0,
        "live_rank": sum(r for r, _ in active),
        "live_params": sum(r * c for r, c in active),
    }


class Trace:
    """The per-step trace (``trace_point``'s points), kept on the device until it is read: recording a
    step costs no host sync, and reading (``points``) brings every pending step to the host in one."""

    def __init__(self, points: Sequence[dict[str, int]] = ()) -> None:
        self._points = list(points)
        self._pending: list[tuple[int, int, torch.Tensor, list[int]]] = []

    def __len__(self) -> int:
        return len(self._points) + len(self._pending)

    def record(self, adapters: list[SVDLinear], plan: BudgetPlan | None, step: int) -> None:
        """Add step ``step``'s point: b(step) and the adapters' live triplets, counted on the device."""
        budget = budget_at(step, plan) if plan is not None else 0
        self._pending.append((step, budget, live_count_tensor(adapters), [a.triplet_cost for a in adapters]))

    @property
    def points(self) -> list[dict[str, int]]:
        """Every point so far, as ``trace_point`` writes them (the pending ones read in one host sync)."""
        if self._pending:
            counts = [c.reshape(-1) for _, _, c, _ in self._pending]
            flat = (
                torch.cat([c.to(counts[0].device) for c in counts]).tolist() if any(c.numel() for c in counts) else []
            )
            offset = 0
            for step, budget, count, costs in self._pending:
                live = flat[offset : offset + count.numel()]
                offset += count.numel()
                self._points.append({
                    "step": step,
                    "budget": budget,
                    "live_rank": int(sum(live)),
                    "live_params": int(sum(n * c for n, c in zip(live, costs, strict=True))),
                })  # fmt: skip
            self._pending = []
        return self._points


def live_budget(adapters: list[SVDLinear], unit_params: bool) -> int:
    """What the live triplets (forward mask 1) use of the budget: their number, or their parameters."""
    return sum(a.live_rank() * (a.triplet_cost if unit_params else 1) for a in adapters)
