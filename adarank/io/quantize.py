"""A quantized frozen base (``model.quantization``): the linear layers of the base's blocks stored in int8
(weight-only, per output row) or NF4 (4-bit NormalFloat, blocks of 64 with double-quantized scales), the
rest (embeddings, norms, the output head, a new classification head) as loaded. Adapters wrap the
quantized layers and train in float on top: the layer's forward dequantizes on the fly and passes the
gradient to its input; the quantized weight gets none.

Backend: torchao (``Int8WeightOnlyConfig`` for int8; ``to_nf4`` for nf4), on every device. Chosen after
measuring the candidates on these CPUs (issue 41): torchao's layers stay ``nn.Linear`` with a logical
(out, in) weight, behave the same in train and eval, deep-copy and dequantize; bitsandbytes' 4-bit layer
on CPU silently breaks the gradient after any eval-mode forward (it repacks its weight for a kernel
without autograd). On CUDA bitsandbytes is the usual QLoRA backend; adarank uses torchao there too, not
yet run on a GPU.
"""

from __future__ import annotations

import copy
import importlib.util
import re

import torch
from torch import nn

QUANTIZATIONS = ("none", "int8", "nf4")
"""model.quantization's values."""

_BLOCK_INDEX = re.compile(r"\.\d+\.")


def backend_problem(quantization: str) -> str | None:
    """Why ``quantization`` cannot run here (its backend is not installed), with the fix; None if it can."""
    if quantization == "none" or importlib.util.find_spec("torchao") is not None:
        return None
    return f"model.quantization={quantization} needs torchao: pip install 'adarank[quant]' (torchao>=0.18)."


def _import_torchao() -> None:
    """Import torchao with its import-time warnings about optional GPU kernels (`Failed to load
    ..._C_mxfp8...so`, harmless on a CPU) kept out of the user's log."""
    import logging

    log = logging.getLogger("torchao")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401
    finally:
        log.setLevel(level)


def _largest_power_of_two_dividing(n: int, cap: int) -> int:
    size = 1
    while size * 2 <= cap and n % (size * 2) == 0:
        size *= 2
    return size


def nf4(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as torchao's NF4Tensor: blocks of 64 (or the largest power of two dividing its size), the
    blocks' scales double-quantized in groups of up to 256 that divide their count (torchao's defaults, which
    need 256 | size / 64: GQA's k/v projections of SmolLM2 have 1,728 blocks)."""
    _import_torchao()
    from torchao.quantization import to_nf4

    block = _largest_power_of_two_dividing(weight.numel(), 64)
    scalers = _largest_power_of_two_dividing(weight.numel() // block, 256)
    return to_nf4(weight.detach(), block_size=block, scaler_block_size=scalers)


def quantize_base_(model: nn.Module, quantization: str, keep: tuple[str, ...] = ()) -> list[str]:
    """Quantize, in place, every ``nn.Linear`` inside the model's blocks (a block index in its name, as
    `all-linear` selects) except the modules in ``keep`` (e.g. a new head); returns the quantized names.

    Raises:
        ValueError: ``quantization`` is unknown, or the model has no such linear layer.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"model.quantization `{quantization}` is not one of {', '.join(QUANTIZATIONS)}")
    if quantization == "none":
        return []
    names = [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and _BLOCK_INDEX.search(name) and not any(name.startswith(k) for k in keep)
    ]
    if not names:
        raise ValueError(
            "model.quantization: the model has no nn.Linear layer inside its blocks to quantize (GPT-2's Conv1D "
            "layers are not quantized); set model.quantization=none"
        )
    _import_torchao()
    if quantization == "int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        chosen = set(names)
        quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda module, fqn: fqn in chosen)
    else:
        for name in names:
            layer = model.get_submodule(name)
            assert isinstance(layer, nn.Linear)
            layer.weight = nn.Parameter(nf4(layer.weight), requires_grad=False)
    for name in names:
        model.get_submodule(name).requires_grad_(False)
    _own_plain_tensors_(model)
    return names


def _own_plain_tensors_(model: nn.Module) -> None:
    """Copy the tensors left plain (embeddings, norms, heads) into memory of their own: loaded from a
    safetensors file they are views of its memory map, which then stays mapped whole, and the float weights
    that quantization read stay resident with it (measured on SmolLM2 int8: 513 MiB of mapped file pages)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if type(tensor.data) is torch.Tensor:
                tensor.data = tensor.data.clone()


def is_quantized(weight: torch.Tensor) -> bool:
    """Whether ``weight`` is a quantized tensor (a torchao tensor subclass), not a plain float tensor."""
    data = weight.data if isinstance(weight, nn.Parameter) else weight
    return type(data).__module__.split(".")[0] == "torchao"


def dequantized(weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A plain ``dtype`` tensor of ``weight``'s values (itself, cast, when it is not quantized)."""
    data = weight.data if isinstance(weight, nn.Parameter) else weight
    if not is_quantized(data):
        return data.to(dtype)
    if hasattr(data, "get_original_weight"):  # torchao's NF4Tensor (its dequantize is a static helper)
        return data.get_original_weight().to(dtype)
    return data.dequantize().to(dtype)


def dequantized_copy(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A deep copy of ``model`` whose quantized weights are plain ``dtype`` tensors of their values (the
    quantized tensors are never copied: torchao's NF4 clone re-quantizes with its default blocks, which
    fails on shapes those do not divide)."""
    memo: dict[int, object] = {}
    for param in model.parameters():
        if is_quantized(param):
            memo[id(param)] = nn.Parameter(dequantized(param, dtype), requires_grad=False)
    return copy.deepcopy(model, memo)
