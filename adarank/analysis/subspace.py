"""Random-subspace training: the model's chosen weights move only inside a random d-dimensional
subspace, θ = θ₀ + P θ_d with θ_d ∈ Rᵈ trained from zero (Li et al. 2018, "Measuring the intrinsic
dimension of objective landscapes"; Aghajanyan et al. 2020 for fine-tuning).

P (D × d) is a sparse random projection that is never materialized: each of the D coordinates of
θ (the target modules' weights, and a new head's parameters when it is inside the subspace) draws
``nonzeros`` columns of P uniformly, with random signs, so a coordinate is

    θ_j = θ₀_j + c · Σ_k s_jk · θ_d[i_jk],     c = sqrt(d / (nonzeros · D)),

which gives P's columns unit norm in expectation (PᵀP ≈ I: a step in θ_d is a step of the same
length in θ, as in Li et al.). Why sparse rather than Fastfood: storage and time are O(nonzeros · D)
(an int32 index and an int8 sign per coordinate, one gather forward and one scatter-add backward),
there is no padding of each module to a power of two (BERT's 384 × 1536 weights would pad 1.8x), and
Li et al. report that sparse and Fastfood projections give the same intrinsic dimensions. With one
nonzero per coordinate the columns are exactly orthogonal (disjoint supports).

Aghajanyan's structure-aware variant (SAID) is ``layer_scaling``: every parameter tensor m gets a
trainable scalar λ_m (from 1), θ_m = θ₀_m + λ_m (P θ_d)_m. Departure: we report d as the size of
θ_d alone; the λ count is reported next to it, not subtracted from d.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize


class _SubspaceOffset(nn.Module):
    """The parametrization of one parameter tensor: θ₀ + λ · c · Σ_k s_k θ_d[i_k] (its slice of P θ_d)."""

    def __init__(self, coords: nn.Parameter, index: torch.Tensor, sign: torch.Tensor, scale: float, layer: bool):
        super().__init__()
        self.coords = coords  # shared by every parametrized tensor; registered in each, trained once
        self.index: torch.Tensor
        self.sign: torch.Tensor
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("sign", sign, persistent=False)
        self.scale = scale
        self.layer_scale = nn.Parameter(torch.ones(())) if layer else None

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        offset = (self.coords[self.index] * self.sign).sum(-1) * self.scale
        if self.layer_scale is not None:
            offset = offset * self.layer_scale
        return original + offset.view_as(original).to(original.dtype)


def subspace_parameters(model: nn.Module, modules: Mapping[str, nn.Module], head: list[str]) -> dict[str, nn.Parameter]:
    """The parameter tensors a subspace covers, by full name: the ``weight`` of each target module and
    every parameter of the ``head`` modules (names relative to ``model``)."""
    out: dict[str, nn.Parameter] = {}
    for name, module in modules.items():
        out[f"{name}.weight"] = module.weight  # type: ignore[assignment]
    for name in head:
        for pname, param in model.get_submodule(name).named_parameters():
            out[f"{name}.{pname}"] = param
    return out


def attach_subspace_(
    model: nn.Module,
    parameters: Mapping[str, nn.Parameter],
    dim: int,
    *,
    nonzeros: int = 1,
    layer_scaling: bool = False,
    seed: int = 0,
) -> nn.Parameter:
    """Freeze all of ``model`` and let the named ``parameters`` move only inside a random ``dim``-dimensional
    subspace (modifies ``model`` in place); returns θ_d, the only trainable tensor besides the λs.

    Args:
        model: the model; its other parameters are frozen.
        parameters: full name -> parameter (``subspace_parameters``); D is their total size.
        dim: d, the subspace dimension (>= 1).
        nonzeros: nonzeros of P per coordinate of θ (>= 1).
        layer_scaling: one trainable scalar per tensor (Aghajanyan et al.'s SAID).
        seed: draws P; the same seed and shapes give the same subspace.

    Raises:
        ValueError: ``dim`` or ``nonzeros`` < 1, or no parameters.
    """
    if dim < 1 or nonzeros < 1 or not parameters:
        raise ValueError(f"a subspace needs dim >= 1 ({dim}), nonzeros >= 1 ({nonzeros}) and parameters to cover")
    total = sum(p.numel() for p in parameters.values())
    model.requires_grad_(False)
    first = next(iter(parameters.values()))
    coords = nn.Parameter(torch.zeros(dim, device=first.device, dtype=torch.float32))
    scale = math.sqrt(dim / (nonzeros * total))
    generator = torch.Generator().manual_seed(seed)
    for name in parameters:
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        size = getattr(owner, attr).numel()
        index = torch.randint(0, dim, (size, nonzeros), generator=generator, dtype=torch.int32)
        sign = torch.randint(0, 2, (size, nonzeros), generator=generator, dtype=torch.int8) * 2 - 1
        offset = _SubspaceOffset(coords, index.to(first.device), sign.to(first.device), scale, layer_scaling)
        parametrize.register_parametrization(owner, attr, offset)
    return coords


def subspace_trainables(model: nn.Module) -> list[nn.Parameter]:
    """θ_d and the λs of ``model`` (each once): what the optimizer trains."""
    return [p for p in model.parameters() if p.requires_grad]
