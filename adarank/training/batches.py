"""What a training step feeds a causal LM: the output head run on the scored positions only
(``only_scored_logits``), the same loss and gradients with fewer head rows."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from adarank.core.sharding import unwrap
from adarank.data.tasks import IGNORE_INDEX


@functools.cache
def _slices_logits(forward: Callable[..., Any]) -> bool:
    """Whether a forward function runs its output head through transformers' ``slice_logits_to_keep``
    (which takes a boolean row mask); read once per model class."""
    try:
        return "slice_logits_to_keep(" in inspect.getsource(forward)
    except (OSError, TypeError):
        return False


def _head_takes_row_masks(model: nn.Module) -> bool:
    """Whether ``model`` (or the model inside its DDP wrapper) is a transformers causal LM whose output
    head runs on the positions a boolean (batch, length) ``logits_to_keep`` mask keeps: then only those
    positions' logits are computed (on SmolLM2 the head is a fifth of a forward's cost)."""
    return _slices_logits(type(unwrap(model)).forward)


def _loss_takes_shift_labels(model: nn.Module) -> bool:
    """Whether ``model``'s loss is transformers' causal-LM loss, which takes ``shift_labels``."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    return getattr(unwrap(model), "loss_function", None) is ForCausalLMLoss


def _scored_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (batch, length) mask of positions whose next token has a label, and the labels shifted to
    those positions (``labels`` shifted left by one, -100 at the end)."""
    shifted = nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return shifted != IGNORE_INDEX, shifted


def only_scored_logits(model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` (input_ids / attention_mask / labels) with what makes a transformers causal LM compute
    its output head and loss at the scored positions alone: ``logits_to_keep``, the (batch, length) mask
    of positions whose next token has a label, and ``shift_labels``, those labels in the same order.
    The loss is the model's own (the same cross-entropy terms, the same ``num_items_in_batch``
    normalisation); only the logits no label reads are skipped. In a generation batch the answer is a
    few tokens of each row, and on SmolLM2 the head (49,152 x 576) is a fifth of the forward and backward
    cost. ``batch`` itself when there are no labels, or the model cannot take the mask
    (``_head_takes_row_masks``) or its loss cannot take ``shift_labels``; then it computes every logit as
    before. The returned logits are one row per kept position (kept, labels) - training only, not for
    code that reads logits per sequence."""
    labels = batch.get("labels")
    if labels is None or labels.dim() != 2 or not _head_takes_row_masks(model) or not _loss_takes_shift_labels(model):
        return batch
    keep, shifted = _scored_positions(labels)
    return {**batch, "logits_to_keep": keep, "shift_labels": shifted[keep]}
