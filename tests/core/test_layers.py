import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from adarank.core.layers import SVDLinear


def test_init_output_equals_base_bit_for_bit() -> None:
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    x = torch.randn(3, 5, 16)
    expected = base(x)
    wrapped = SVDLinear(base, rank=4, alpha=8)
    assert torch.equal(wrapped(x), expected)
    assert not base.weight.requires_grad and not base.bias.requires_grad


def test_init_factors_are_orthonormal() -> None:
    wrapped = SVDLinear(nn.Linear(16, 12), rank=4, alpha=8)
    eye = torch.eye(4)
    torch.testing.assert_close(wrapped.left_vectors.T @ wrapped.left_vectors, eye, atol=1e-6, rtol=0)
    torch.testing.assert_close(wrapped.right_vectors @ wrapped.right_vectors.T, eye, atol=1e-6, rtol=0)
    assert wrapped.left_vectors.shape == (12, 4) and wrapped.right_vectors.shape == (4, 16)
    assert wrapped.scaling == 2.0


@pytest.mark.parametrize("conv", [False, True])
def test_output_equals_dense_reference(conv: bool) -> None:
    torch.manual_seed(1)
    base = Conv1D(12, 16) if conv else nn.Linear(16, 12)  # Conv1D(nf=out, nx=in), weight in x out
    wrapped = SVDLinear(base, rank=5, alpha=10)
    with torch.no_grad():
        wrapped.singular_values.copy_(torch.tensor([0.5, -1.0, 2.0, 0.25, 3.0]))
        wrapped.rank_mask.copy_(torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0]))
    w0 = base.weight.T if conv else base.weight
    p, q = wrapped.left_vectors, wrapped.right_vectors
    lam_masked = torch.tensor([0.5, 0.0, 2.0, 0.25, 0.0])
    dense = w0 + 2.0 * p @ torch.diag(lam_masked) @ q
    x = torch.randn(7, 16)
    torch.testing.assert_close(wrapped(x), x @ dense.T + base.bias, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wrapped.delta_weight(), dense - w0, atol=1e-6, rtol=1e-6)
    assert wrapped.live_rank() == 3


def test_rejects_non_linear_and_bad_rank() -> None:
    with pytest.raises(TypeError, match="only nn.Linear and transformers Conv1D"):
        SVDLinear(nn.Conv2d(3, 3, 3), rank=2, alpha=1)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        SVDLinear(nn.Linear(4, 4), rank=0, alpha=1)


def test_adapter_params_are_fp32_for_bf16_base() -> None:
    base = nn.Linear(8, 8).to(torch.bfloat16)
    wrapped = SVDLinear(base, rank=2, alpha=2)
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    assert wrapped.singular_values.dtype == torch.float32
    assert wrapped(x).dtype == torch.bfloat16
