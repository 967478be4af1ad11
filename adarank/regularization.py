"""Orthogonality penalty on the SVD factors (AdaLoRA eq. 4)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from adarank.layers import SVDLinear
from adarank.sharding import full


def orthogonality_penalty(adapters: Iterable[SVDLinear]) -> torch.Tensor:
    """Sum over adapters of ||P^T P - I||_F^2 + ||Q Q^T - I||_F^2 (AdaLoRA eq. 4), in fp32.

    The paper's squared Frobenius norm, summed (PEFT takes the unsquared norm and averages over
    matrices, which divides the weight by the number of adapters). All r triplets are regularized,
    pruned ones included, so a triplet that regrows (default mode) is still near-orthonormal.

    On FSDP2-sharded adapters P and Q are gathered whole (a differentiable all-gather per factor; they
    are small next to the base weights FSDP gathers anyway): every process computes the same penalty,
    and the backward hands each process the gradient of its own shard.

    Raises:
        ValueError: if ``adapters`` is empty.
    """
    terms = []
    for adapter in adapters:
        left = full(adapter.left_vectors).float()
        right = full(adapter.right_vectors).float()
        eye = torch.eye(adapter.rank, device=left.device)
        terms.append(((left.T @ left - eye) ** 2).sum() + ((right @ right.T - eye) ** 2).sum())
    if not terms:
        raise ValueError("orthogonality_penalty needs at least one adapter")
    return torch.stack(terms).sum()
