"""Smoothed sensitivity scores of SVD triplets (AdaLoRA eqs. 9-11).

For every entry theta of P, lambda and Q, once per optimizer step:

    I     = |theta * grad|                     sensitivity
    I_bar <- beta_s I_bar + (1 - beta_s) I     smoothed sensitivity
    U_bar <- beta_u U_bar + (1 - beta_u) |I - I_bar|   uncertainty (with the new I_bar)
    s     = I_bar * U_bar

and the score of triplet i is S_i = s(lambda_i) + mean_j s(P_ji) + mean_j s(Q_ij). The ablation
`score="sensitivity"` uses s = I_bar alone.
Buffers are fp32 whatever the model dtype. On FSDP2-sharded adapters the buffers are DTensors sharded
like their parameters: each process updates its own shard (no communication), and the per-triplet
scores are summed over processes once per masking step (``RankAllocator.triplet_scores``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from adarank.config import SCORES
from adarank.core.layers import SVDLinear
from adarank.core.sharding import all_reduce_sum_, any_sharded, local, local_rows

PARTS = ("left_vectors", "singular_values", "right_vectors")
ImportanceState = dict[str, torch.Tensor]


def init_importance(adapter: SVDLinear) -> ImportanceState:
    """Zeroed fp32 EMA buffers (``<part>.sensitivity`` / ``<part>.uncertainty``) for one adapter, shaped
    (and, under FSDP2, sharded) like its parameters."""
    state: ImportanceState = {}
    for part in PARTS:
        param = getattr(adapter, part)
        for kind in ("sensitivity", "uncertainty"):
            state[f"{part}.{kind}"] = torch.zeros_like(param, dtype=torch.float32, requires_grad=False).detach()
    return state


def update_importance_(
    state: ImportanceState,
    adapter: SVDLinear,
    beta_sensitivity: float,
    beta_uncertainty: float,
    exclude: dict[str, torch.Tensor] | None = None,
    finite: torch.Tensor | None = None,
) -> None:
    """Fold the adapter's current |theta * grad| into ``state`` (mutated in place). ``exclude`` maps a
    part (``left_vectors``, ...) to a share of its gradient to leave out, e.g. the orthogonality
    penalty's: then |theta * (grad - share)|. With ``finite`` (a 0-dim boolean tensor, e.g.
    ``finite_gradients``), the state is left as it was where ``finite`` is false, decided on the device
    (no host sync).

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
        sensitivity = local(state[f"{part}.sensitivity"])  # this process's shard under FSDP2
        uncertainty = local(state[f"{part}.uncertainty"])
        grad = local(param.grad.detach()).float()
        if exclude is not None and part in exclude:
            grad = grad - local(exclude[part]).float()
        current = (local(param.detach()).float() * grad).abs_()
        if finite is None:
            sensitivity.mul_(beta_sensitivity).add_(current, alpha=1 - beta_sensitivity)
            uncertainty.mul_(beta_uncertainty).add_((current - sensitivity).abs_(), alpha=1 - beta_uncertainty)
            continue
        # the same operations out of place (so the same rounding), kept only where the step is finite
        new_sensitivity = (sensitivity * beta_sensitivity).add_(current, alpha=1 - beta_sensitivity)
        new_uncertainty = (uncertainty * beta_uncertainty).add_(
            (current - new_sensitivity).abs_(), alpha=1 - beta_uncertainty
        )
        sensitivity.copy_(torch.where(finite, new_sensitivity, sensitivity))
        uncertainty.copy_(torch.where(finite, new_uncertainty, uncertainty))


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


def local_score_share(state: ImportanceState, score: str = "sensitivity_uncertainty") -> torch.Tensor:
    """This process's share of ``triplet_scores`` on FSDP2-sharded state (shape r, plain tensor): its
    lambda and Q rows' terms at their triplets' positions (zeros elsewhere) plus its rows of P summed
    and divided by d_out. Summed over processes it is ``triplet_scores`` of the whole state."""
    if score not in SCORES:
        raise ValueError(f"score `{score}` is not one of {', '.join(SCORES)}.")

    def entry_scores(part: str) -> torch.Tensor:
        sensitivity = local(state[f"{part}.sensitivity"])
        return sensitivity if score == "sensitivity" else sensitivity * local(state[f"{part}.uncertainty"])

    singular_state = state["singular_values.sensitivity"]
    rank, rows = int(singular_state.shape[0]), local_rows(singular_state)
    d_out = int(state["left_vectors.sensitivity"].shape[0])
    share = entry_scores("left_vectors").sum(dim=0) / d_out
    share[rows] += entry_scores("singular_values") + entry_scores("right_vectors").mean(dim=1)
    assert share.shape == (rank,)
    return share


def finite_gradients(adapters: Sequence[SVDLinear]) -> torch.Tensor | None:
    """Whether every adapter gradient is finite, as a 0-dim boolean tensor on the adapters' device (no
    host sync); on sharded gradients agreed by all processes (one all_reduce). None without gradients."""
    grads = [p.grad for a in adapters for p in a.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return None
    if not any_sharded(grads):
        return torch.stack([torch.isfinite(g).all() for g in grads]).all()
    bad = torch.stack([(~torch.isfinite(local(g))).sum() for g in grads]).sum().float().reshape(1)
    return all_reduce_sum_(bad)[0] == 0


def all_triplet_scores(
    adapters: Mapping[str, SVDLinear], states: Mapping[str, ImportanceState], score: str
) -> dict[str, torch.Tensor]:
    """Every adapter's triplet scores (``triplet_scores``), in the order of ``adapters``. On FSDP2-sharded
    adapters each process computes its share and a single all_reduce for all adapters together sums
    them, so every process holds the same scores."""
    names = list(adapters)
    ordered = [states[n] for n in names]
    if not any_sharded([s["singular_values.sensitivity"] for s in ordered]):
        return {n: triplet_scores(s, score) for n, s in zip(names, ordered, strict=True)}
    shares = torch.cat([local_score_share(s, score) for s in ordered])
    all_reduce_sum_(shares)
    return dict(zip(names, shares.split([adapters[n].rank for n in names]), strict=True))
