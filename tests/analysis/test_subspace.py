"""Random-subspace training (adarank/analysis/subspace.py): θ = θ₀ + P θ_d with a sparse P never materialized."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_bert

from adarank.analysis.subspace import attach_subspace_, subspace_parameters, subspace_trainables
from adarank.core.inject import select_modules

TARGETS = ["query", "value"]


def _attached(dim: int, seed: int = 0, **options: object) -> tuple[torch.nn.Module, torch.nn.Parameter, dict]:
    model = tiny_bert()
    params = subspace_parameters(model, select_modules(model, TARGETS), ["classifier"])
    names = list(params)
    coords = attach_subspace_(model, params, dim, seed=seed, **options)  # type: ignore[arg-type]
    return model, coords, {n: model.get_submodule(n.rpartition(".")[0]) for n in names}


def _dense_projection(model: torch.nn.Module, coords: torch.nn.Parameter, names: list[str]) -> torch.Tensor:
    """P built column by column from the parametrization itself: θ(e_i) − θ₀ for each unit θ_d = e_i."""
    columns = []
    with torch.no_grad():
        base = torch.cat([_value(model, n).flatten() for n in names])
        for i in range(coords.numel()):
            coords.zero_()
            coords[i] = 1.0
            columns.append(torch.cat([_value(model, n).flatten() for n in names]) - base)
        coords.zero_()
    return torch.stack(columns, dim=1)


def _value(model: torch.nn.Module, name: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(owner), attr)


def test_starts_at_the_base_and_trains_only_theta_d() -> None:
    """θ_d = 0 gives the base model's outputs exactly; θ_d is the one trainable tensor (shared by every
    parametrized weight, counted once); D covers the 4 targets' weights and the head's weight and bias."""
    base = tiny_bert()
    model, coords, _ = _attached(dim=7)
    ids = torch.randint(0, 100, (3, 9))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
    assert subspace_trainables(model) == [coords] and coords.shape == (7,)
    params = subspace_parameters(tiny_bert(), select_modules(tiny_bert(), TARGETS), ["classifier"])
    assert sum(p.numel() for p in params.values()) == 4 * 32 * 32 + 2 * 32 + 2


def test_projection_columns_have_unit_norm_and_one_nonzero_per_weight() -> None:
    """Built densely from the model: every row of P has exactly one ±c entry (nonzeros=1), the columns have
    disjoint supports (PᵀP diagonal) and squared norms averaging 1 (c = sqrt(d / D))."""
    model, coords, owners = _attached(dim=5)
    names = list(owners)
    projection = _dense_projection(model, coords, names)
    total = projection.shape[0]
    scale = math.sqrt(5 / total)
    assert torch.equal((projection != 0).sum(1), torch.ones(total, dtype=torch.long))
    assert torch.allclose(projection.abs()[projection != 0], torch.tensor(scale))
    gram = projection.T @ projection
    assert torch.allclose(gram - torch.diag(torch.diagonal(gram)), torch.zeros(5, 5))
    assert torch.diagonal(gram).mean().item() == pytest.approx(1.0, rel=1e-5)


def test_gradient_is_the_projected_weight_gradient() -> None:
    """∂L/∂θ_d = Pᵀ ∂L/∂θ: the subspace gradient equals the full model's weight gradient projected by the
    dense P (two nonzeros per weight, layer scales on)."""
    model, coords, owners = _attached(dim=6, nonzeros=2, layer_scaling=True)
    names = list(owners)
    projection = _dense_projection(model, coords, names)
    ids, labels = torch.randint(0, 100, (4, 8)), torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        coords.copy_(torch.randn(6) * 0.1)  # away from 0, where the layer scales' gradient vanishes
    model(input_ids=ids, labels=labels).loss.backward()
    assert coords.grad is not None
    plain = tiny_bert()
    with torch.no_grad():
        for name in names:  # the same θ as the subspace model, as ordinary parameters
            _value(plain, name).copy_(_value(model, name))
    plain(input_ids=ids, labels=labels).loss.backward()
    weight_grad = torch.cat([_value(plain, n).grad.flatten() for n in names])  # type: ignore[union-attr]
    assert torch.allclose(coords.grad, projection.T @ weight_grad, atol=1e-6)
    scales = [p for p in subspace_trainables(model) if p.dim() == 0]
    assert len(scales) == len(names) == 6 and all(s.grad is not None for s in scales)


def test_the_seed_draws_the_subspace() -> None:
    same = [_dense_projection(*_attached(dim=4, seed=3)[:2], list(_attached(dim=4)[2])) for _ in range(2)]
    other = _dense_projection(*_attached(dim=4, seed=4)[:2], list(_attached(dim=4)[2]))
    assert torch.equal(same[0], same[1]) and not torch.equal(same[0], other)


def test_bad_arguments_are_refused() -> None:
    model = tiny_bert()
    params = subspace_parameters(model, select_modules(model, TARGETS), [])
    with pytest.raises(ValueError, match="dim >= 1"):
        attach_subspace_(model, params, 0)
    with pytest.raises(ValueError, match="nonzeros >= 1"):
        attach_subspace_(model, params, 4, nonzeros=0)
