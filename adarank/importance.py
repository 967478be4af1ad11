"""Smoothed sensitivity scores of SVD triplets (AdaLoRA eqs. 9-11).

For every entry theta of P, lambda and Q, once per optimizer step:

    I     = |theta * grad|                     sensitivity
    I_bar <- beta_s I_bar + (1 - beta_s) I     smoothed sensitivity
    U_bar <- beta_u U_bar + (1 - beta_u) |I - I_bar|   uncertainty (with the new I_bar)
    s     = I_bar * U_bar

and the score of triplet i is S_i = s(lambda_i) + mean_j s(P_ji) + mean_j s(Q_ij). The ablation
`score="sensitivity"` uses s = I_bar alone.
Buffers are fp32 whatever the model dtype.
"""

from __future__ import annotations

import torch

from adarank.config import SCORES
from adarank.layers import SVDLinear

PARTS = ("left_vectors", "singular_values", "right_vectors")
ImportanceState = dict[str, torch.Tensor]


def init_importance(adapter: SVDLinear) -> ImportanceState:
    """Zeroed fp32 EMA buffers (``<part>.sensitivity`` / ``<part>.uncertainty``) for one adapter."""
    state: ImportanceState = {}
    for part in PARTS:
        param = getattr(adapter, part)
        for kind in ("sensitivity", "uncertainty"):
            state[f"{part}.{kind}"] = torch.zeros(param.shape, dtype=torch.float32, device=param.device)
    return state


def update_importance_(
    state: ImportanceState, adapter: SVDLinear, beta_sensitivity: float, beta_uncertainty: float
) -> None:
    """Fold the adapter's current |theta * grad| into ``state`` (mutated in place).

    Raises:
        RuntimeError: if a parameter has no gradient (scores must be updated after backward and
            before the gradients are zeroed).
    """
    for part in PARTS:
        param = getattr(adapter, part)
        if param.grad is None:
            raise RuntimeError(
                f"adapter parameter {part} has no gradient: update importance after backward() and "
                "optimizer.step(), before zero_grad() (in a Trainer, use AdaRankCallback)."
            )
        sensitivity = state[f"{part}.sensitivity"]
        uncertainty = state[f"{part}.uncertainty"]
        current = (param.detach().float() * param.grad.detach().float()).abs_()
        sensitivity.mul_(beta_sensitivity).add_(current, alpha=1 - beta_sensitivity)
        uncertainty.mul_(beta_uncertainty).add_((current - sensitivity).abs_(), alpha=1 - beta_uncertainty)


def triplet_scores(state: ImportanceState, score: str = "sensitivity_uncertainty") -> torch.Tensor:
    """Score of each triplet (shape r): s(lambda_i) + mean_j s(P_ji) + mean_j s(Q_ij), with
    s = I_bar * U_bar (``score="sensitivity_uncertainty"``) or s = I_bar (``score="sensitivity"``)."""
    if score not in SCORES:
        raise ValueError(f"score `{score}` is not one of {', '.join(SCORES)}.")

    def entry_scores(part: str) -> torch.Tensor:
        if score == "sensitivity":
            return state[f"{part}.sensitivity"]
        return state[f"{part}.sensitivity"] * state[f"{part}.uncertainty"]

    singular, left, right = (entry_scores(part) for part in ("singular_values", "left_vectors", "right_vectors"))
    return singular + left.mean(dim=0) + right.mean(dim=1)
