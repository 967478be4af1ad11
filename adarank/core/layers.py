"""SVD adapter around a frozen linear layer (AdaLoRA eq. 3).

    y = W0 x + s * P diag(lambda * m) Q x

P (d_out x r) holds the left vectors, lambda (r) the singular values, Q (r x d_in) the right
vectors, m (r) the rank mask applied in the forward pass and s = alpha / r the scaling.

Initialisation (a departure from the paper and PEFT, both of which draw P and Q from N(0, 0.02)):
P has orthonormal columns and Q orthonormal rows, so the orthogonality penalty is exactly 0 at
init and each triplet's update direction has unit size; lambda = 0 so the wrapped model equals
the base model bit for bit at step 0. See docs/method.md, "Initialisation and learning rates".
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from adarank.io.quantize import is_quantized

LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)


def linear_features(base: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a Linear (weight d_out x d_in) or transformers Conv1D (weight d_in x d_out)."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if isinstance(base, Conv1D):
        d_in, d_out = base.weight.shape
        return int(d_in), int(d_out)
    raise TypeError(f"cannot adapt {type(base).__name__}: only nn.Linear and transformers Conv1D")


def _semi_orthonormal(rows: int, cols: int, generator: torch.Generator | None) -> torch.Tensor:
    """A rows x cols matrix with orthonormal columns (rows >= cols) or orthonormal rows."""
    tall = rows >= cols
    gaussian = torch.randn(max(rows, cols), min(rows, cols), generator=generator)
    basis, upper = torch.linalg.qr(gaussian)
    basis = basis * torch.sign(torch.diagonal(upper)).where(torch.diagonal(upper) != 0, 1.0)
    return (basis if tall else basis.T).contiguous()  # row-major: FSDP2 shards only contiguous parameters


class SVDLinear(nn.Module):
    """A frozen linear layer plus a rank-``rank`` SVD-form update, trained in fp32.

    Args:
        base: the ``nn.Linear`` or transformers ``Conv1D`` to wrap; its weights are frozen.
        rank: initial rank r (number of triplets).
        alpha: scaling numerator; the update is multiplied by ``alpha / rank``.
        dropout: dropout probability on the adapter input (default 0).
        generator: random generator for the initial P and Q (default: torch's global one).
        scaling: the update's multiplier s; default alpha / rank. A loaded adapter passes its exported
            value (it was alpha / init_rank, while the loaded rank is the live rank).
    """

    rank_mask: torch.Tensor
    merged: bool

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        scaling: float | None = None,
    ):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.in_features, self.out_features = linear_features(base)
        self.base = base
        for param in base.parameters():
            param.requires_grad_(False)
        weight = base.weight
        assert isinstance(weight, torch.Tensor)
        # a base on the meta device (an FSDP2 process that reads its shards later): the adapter gets real
        # values all the same, drawn as in one process, and keeps them through the sharding
        device = torch.device("cpu") if weight.is_meta else weight.device
        left = _semi_orthonormal(self.out_features, rank, generator)
        right = _semi_orthonormal(rank, self.in_features, generator)
        self.left_vectors = nn.Parameter(left.to(device))  # P
        self.singular_values = nn.Parameter(torch.zeros(rank, device=device))  # lambda
        self.right_vectors = nn.Parameter(right.to(device))  # Q
        self.register_buffer("rank_mask", torch.ones(rank, device=device))  # m
        self.scaling = alpha / rank if scaling is None else float(scaling)
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def rank(self) -> int:
        """Initial rank r (the number of triplets, live or pruned)."""
        return self.singular_values.numel()

    @property
    def triplet_cost(self) -> int:
        """Parameters of one triplet (a column of P, one lambda, a row of Q): d_in + d_out + 1."""
        return self.in_features + self.out_features + 1

    def live_rank(self) -> int:
        """Triplets the forward pass keeps (rank mask entries equal to 1)."""
        return int(torch.count_nonzero(self.rank_mask))

    def active_rank(self) -> int:
        """Triplets that change the output: lambda * mask nonzero. In the default mode the mask stays
        at init_rank during the decay while pruned lambdas are zeroed, so this, not ``live_rank``, is
        the rank the update has (the dashboards' `live_rank`)."""
        return int(torch.count_nonzero(self.singular_values.detach() * self.rank_mask))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:  # the update already lives in the base weight
            return out
        h = self.dropout(x).to(self.right_vectors.dtype) @ self.right_vectors.T
        h = h * (self.singular_values * self.rank_mask * self.scaling)
        return out + (h @ self.left_vectors.T).to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The dense update s P diag(lambda * m) Q, shaped like a Linear weight (d_out x d_in)."""
        scaled = self.left_vectors * (self.singular_values * self.rank_mask * self.scaling)
        return scaled @ self.right_vectors

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight in place (idempotent); forward then skips the adapter.
        Merging rounds the base weight to its dtype, so unmerge restores it only up to that rounding.

        Raises:
            RuntimeError: the base weight is quantized (model.quantization): it cannot hold the sum.
        """
        if isinstance(self.base.weight, torch.Tensor) and is_quantized(self.base.weight):
            raise RuntimeError(
                "cannot merge into a quantized base weight: export --format merged (it dequantizes the base first, "
                "adarank.core.export.merged_copy), or keep the adapter apart (--format peft or native)."
            )
        if not self.merged:
            self._add_to_base(1.0)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the base weight (idempotent)."""
        if self.merged:
            self._add_to_base(-1.0)
            self.merged = False

    def _add_to_base(self, sign: float) -> None:
        weight = self.base.weight
        assert isinstance(weight, torch.Tensor)
        delta = self.delta_weight()
        if not isinstance(self.base, nn.Linear):  # Conv1D stores the weight transposed (d_in x d_out)
            delta = delta.T
        weight.add_(sign * delta.to(weight.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scaling={self.scaling:g}"
