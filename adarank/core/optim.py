"""The optimizer's view of an adarank model: AdamW parameter groups with lambda's own learning rate, and
the factor gradient clipping applied (which the allocator needs for task-only scores)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adarank.config import SINGULAR_LR_MULTIPLIER
from adarank.core.inject import find_adapters


def param_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float = 0.0,
    singular_lr_multiplier: float = SINGULAR_LR_MULTIPLIER,
) -> list[dict[str, Any]]:
    """AdamW parameter groups: singular values at ``learning_rate * singular_lr_multiplier`` without
    weight decay; other trainable matrices with ``weight_decay``; other vectors without.

    Why a separate rate for lambda: with Adam each entry moves by about the learning rate per step.
    LoRA's B has d_out x r entries that all move, while each AdaLoRA triplet has one lambda, so at
    the same rate AdaLoRA's update grows ~sqrt(d_out) times slower (docs/method.md, "Initialisation").
    """
    singular = {id(a.singular_values) for a in find_adapters(model).values()}
    groups: dict[str, list[torch.nn.Parameter]] = {"decay": [], "no_decay": [], "singular": []}
    for param in model.parameters():
        if not param.requires_grad:
            continue
        key = "singular" if id(param) in singular else "decay" if param.dim() >= 2 else "no_decay"
        groups[key].append(param)
    spec = {
        "singular": (learning_rate * singular_lr_multiplier, 0.0),
        "decay": (learning_rate, weight_decay),
        "no_decay": (learning_rate, 0.0),
    }
    return [
        {"params": params, "lr": spec[key][0], "weight_decay": spec[key][1]} for key, params in groups.items() if params
    ]


def clip_coefficient(norm: float | torch.Tensor, max_norm: float) -> float | torch.Tensor:
    """The factor gradient clipping multiplied the gradients by (torch's clip_grad_norm_ rule); for a
    tensor norm a 0-dim tensor on its device, so reading it needs no host sync."""
    if isinstance(norm, torch.Tensor):
        return torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return min(1.0, max_norm / (norm + 1e-6))
