"""Warm start (``adapter.init=gradient``): P and Q from the top singular directions of each adapted
weight's task gradient over a few training batches, instead of random orthonormal ones.

For a frozen weight W0 the loss gradient G = dL/dW0 is also the gradient with respect to the update
ΔW = s P diag(λ) Q. With G = U S V^T and P = U[:, :r], Q = V^T[:r], the first gradient of λ_i is
s σ_i (σ_i the i-th singular value of G): every triplet starts on one of its module's r steepest
directions. λ stays 0, so the model's function is unchanged until the first optimizer step, and P and
Q stay orthonormal (the orthogonality penalty is 0 at init, as with the random start).

G is accumulated by hooks on the adapters (G += g_out^T x over the tokens), so W0 never needs a
gradient; the cost is one forward and backward per batch and one SVD per adapter, before training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from adarank.core.layers import SVDLinear

Loss = Callable[[nn.Module, Any], torch.Tensor]


def model_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The loss a transformers model computes for a batch with labels."""
    return model(**batch).loss


def weight_gradients(
    model: nn.Module, adapters: Mapping[str, SVDLinear], batches: Iterable[Any], loss: Loss = model_loss
) -> dict[str, torch.Tensor]:
    """The gradient of ``loss(model, batch)`` for each adapter's base weight, summed over ``batches``
    (d_out x d_in, fp32, Linear layout also for a Conv1D). Leaves no gradient on any parameter; the
    model's train/eval mode is restored."""
    sums = {n: torch.zeros(a.out_features, a.in_features, device=a.left_vectors.device) for n, a in adapters.items()}

    def capture(name: str) -> Any:
        def forward_hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            inputs = args[0].detach().reshape(-1, args[0].shape[-1]).float()

            def grad_hook(grad_output: torch.Tensor) -> None:
                sums[name].add_(grad_output.reshape(-1, grad_output.shape[-1]).float().T @ inputs)

            output.register_hook(grad_hook)

        return forward_hook

    handles = [adapter.register_forward_hook(capture(name)) for name, adapter in adapters.items()]
    was_training = model.training
    model.train()
    try:
        count = 0
        for batch in batches:
            loss(model, batch).backward()
            count += 1
        if count == 0:
            raise ValueError("a warm start needs at least one batch")
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return sums


@torch.no_grad()
def align_to_gradients_(adapters: Mapping[str, SVDLinear], gradients: Mapping[str, torch.Tensor]) -> None:
    """Set each adapter's P and Q to the top ``rank`` left and right singular vectors of its gradient.

    Raises:
        ValueError: an adapter's rank exceeds min(d_out, d_in) (a gradient has no more directions).
    """
    for name, adapter in adapters.items():
        if adapter.rank > min(adapter.out_features, adapter.in_features):
            raise ValueError(
                f"{name}: rank {adapter.rank} exceeds min(d_out, d_in) = "
                f"{min(adapter.out_features, adapter.in_features)}; a gradient warm start needs rank <= that"
            )
        left, _, right = torch.linalg.svd(gradients[name], full_matrices=False)
        adapter.left_vectors.copy_(left[:, : adapter.rank])
        adapter.right_vectors.copy_(right[: adapter.rank])


def warm_start_(
    model: nn.Module, adapters: Mapping[str, SVDLinear], batches: Iterable[Any], loss: Loss = model_loss
) -> None:
    """Re-initialise every adapter's P and Q from the gradient of ``loss`` over ``batches`` (default: the
    model's own loss; batches carry labels); λ is untouched (0 before training). Call it after
    ``inject_adapters`` and before the optimizer's first step, with the same batches on every process
    (the result is then the same)."""
    align_to_gradients_(adapters, weight_gradients(model, adapters, batches, loss))
