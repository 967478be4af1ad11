"""What a training step feeds a causal LM: the output head run on the scored positions only
(``only_scored_logits``), the same loss and gradients with fewer head rows, the positions found on the
host before the batch moves to the device."""

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
    head runs on the positions a (batch, k) ``logits_to_keep`` tensor names: then only those positions'
    logits are computed (on SmolLM2 the head is a fifth of a forward's cost)."""
    return _slices_logits(type(unwrap(model)).forward)


def _loss_takes_shift_labels(model: nn.Module) -> bool:
    """Whether ``model``'s loss is transformers' causal-LM loss, which takes ``shift_labels``."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    return getattr(unwrap(model), "loss_function", None) is ForCausalLMLoss


def scored_mask(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (batch, length) mask of positions whose next token has a label, and the labels shifted to
    those positions (``labels`` shifted left by one, -100 at the end): evaluation's row-by-row form."""
    shifted = nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return shifted != IGNORE_INDEX, shifted


def scored_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each row's next token has a label, as (batch, k) integer positions (k the most any row has;
    shorter rows padded with positions whose label is -100), and those labels in the same layout:
    ``labels`` shifted left by one. Call it on the host (CPU) batch: the width k is read there, which on
    an accelerator would stop the host."""
    keep, shifted = scored_mask(labels)
    counts = keep.sum(dim=1)
    width = max(int(counts.max()), 1) if labels.numel() else 1
    # a stable sort puts each row's kept positions first, in order; the rest pads (their labels masked)
    positions = torch.sort(keep.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]
    valid = torch.arange(width, device=labels.device)[None, :] < counts[:, None]
    return positions, torch.where(valid, torch.gather(shifted, 1, positions), IGNORE_INDEX)


def takes_scored_positions(model: nn.Module) -> bool:
    """Whether ``only_scored_logits`` shortens ``model``'s batches: a transformers causal LM whose head
    takes ``logits_to_keep`` positions and whose loss takes ``shift_labels``."""
    return _head_takes_row_masks(model) and _loss_takes_shift_labels(model)


class ScoredPositionsCollator:
    """A data collator that adds ``only_scored_logits``' positions to each collated batch on the host (in
    the data loader), for a model that ``takes_scored_positions``; picklable for loader workers."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]]) -> None:
        self.collate = collate

    def __call__(self, features: list[Any]) -> dict[str, Any]:
        batch = self.collate(features)
        labels = batch.get("labels")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
            return batch
        positions, shifted = scored_positions(labels)
        return {**batch, "logits_to_keep": positions, "shift_labels": shifted}


def only_scored_logits(model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` (input_ids / attention_mask / labels) with what makes a transformers causal LM compute
    its output head and loss at the scored positions alone: ``logits_to_keep``, the (batch, k) positions
    whose next token has a label (``scored_positions``), and ``shift_labels``, those labels in the same
    layout. The loss is the model's own (the same cross-entropy terms, the same ``num_items_in_batch``
    normalisation); only the logits no label reads are skipped. In a generation batch the answer is a
    few tokens of each row, and on SmolLM2 the head (49,152 x 576) is a fifth of the forward and backward
    cost. ``batch`` itself when there are no labels, it already holds ``logits_to_keep``, or the model
    cannot take positions (``_head_takes_row_masks``) or its loss cannot take ``shift_labels``; then it
    computes every logit as before. Training only, not for code that reads logits per sequence. Call it
    on the host batch, before it moves to the device (see ``scored_positions``)."""
    labels = batch.get("labels")
    if "logits_to_keep" in batch or labels is None or labels.dim() != 2 or not takes_scored_positions(model):
        return batch
    positions, shifted = scored_positions(labels)
    return {**batch, "logits_to_keep": positions, "shift_labels": shifted}
