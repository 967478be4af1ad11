"""Orthogonality penalty on the SVD factors (AdaLoRA eq. 4)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from adarank.core.layers import SVDLinear
from adarank.core.sharding import full_all


def orthogonality_penalty(adapters: Iterable[SVDLinear], live_only: bool = False) -> torch.Tensor:
    """Sum over adapters of ||P^T P - I||_F^2 + ||Q Q^T - I||_F^2 (AdaLoRA eq. 4), in fp32.

    The paper's squared Frobenius norm, summed (PEFT takes the unsquared norm and averages over
    matrices, which divides the weight by the number of adapters). While masks can change all r
    triplets are regularized, pruned ones included, so a triplet that regrows (default mode) is still
    near-orthonormal. With ``live_only`` (the final phase, where the masks are fixed and pruned
    triplets can never return) only the triplets the forward mask keeps are: the pruned ones' cross
    terms would otherwise keep steering the live P and Q, and a shrunk adapter (``budget.shrink``),
    which holds only the live triplets, then gets exactly the penalty it would have had unshrunk.

    On FSDP2-sharded adapters (the Trainer under accelerate's FSDP2; adarank's engine keeps adapters whole)
    every P and Q is gathered whole in one differentiable all-gather for all of them (``full_all``; it was
    one per factor): every process computes the same penalty, and the backward hands each process the
    gradient of its own shard.

    Raises:
        ValueError: if ``adapters`` is empty.
    """
    adapters = list(adapters)
    factors = full_all([factor for a in adapters for factor in (a.left_vectors, a.right_vectors)])
    terms = []
    for index, adapter in enumerate(adapters):
        left = factors[2 * index].float()
        right = factors[2 * index + 1].float()
        eye = torch.eye(adapter.rank, device=left.device)
        if live_only:  # zero the pruned triplets' rows and columns: no host sync, same value as slicing them out
            mask = adapter.rank_mask.float()
            left, right, eye = left * mask, right * mask[:, None], torch.diag(mask)
        terms.append(((left.T @ left - eye) ** 2).sum() + ((right @ right.T - eye) ** 2).sum())
    if not terms:
        raise ValueError("orthogonality_penalty needs at least one adapter")
    return torch.stack(terms).sum()


def penalty_gradients(penalty: torch.Tensor, adapters: Mapping[str, SVDLinear]) -> dict[str, dict[str, torch.Tensor]]:
    """The gradient of ``penalty`` w.r.t. each adapter's P (``left_vectors``) and Q (``right_vectors``),
    by autograd through the penalty alone (its graph kept for the loss's backward); parts it does not
    reach are left out."""
    names = list(adapters)
    params = [p for n in names for p in (adapters[n].left_vectors, adapters[n].right_vectors)]
    grads = torch.autograd.grad(penalty, params, retain_graph=True, allow_unused=True)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for i, name in enumerate(names):
        pair = zip(("left_vectors", "right_vectors"), grads[2 * i : 2 * i + 2], strict=True)
        out[name] = {part: grad.detach() for part, grad in pair if grad is not None}
    return out
