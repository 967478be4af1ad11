"""Optimizer parameter groups and a Trainer subclass that adds the orthogonality penalty exactly."""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from adarank.config import SINGULAR_LR_MULTIPLIER
from adarank.core.inject import RECORD_ATTR, find_adapters
from adarank.core.optim import clip_coefficient, param_groups
from adarank.core.regularization import orthogonality_penalty
from adarank.core.schedule import budget_at
from adarank.core.sharding import unwrap
from adarank.training.batches import ScoredPositionsCollator, only_scored_logits, takes_scored_positions
from adarank.training.callback import AdaRankCallback
from adarank.training.checkpoint import latest_complete_checkpoint


def _loss_counts_items(model: nn.Module) -> bool:
    """Whether ``model.forward`` hands its keyword arguments (num_items_in_batch) to a transformers
    loss function, which then normalizes by the item count (Llama's causal LM does); False for a batch
    mean (BERT's classifiers, and transformers' generic sequence classifier, which drops the kwargs)."""
    try:
        source = inspect.getsource(type(model).forward)
    except (OSError, TypeError):
        return True  # unknown: keep the Trainer's own decision
    return re.search(r"self\.loss_function\([^()]*\*\*kwargs", source) is not None


def keeps_trainer_loss(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a ``compute_loss`` override that hands its inputs to ``Trainer.compute_loss`` and reads nothing of
    the outputs but the loss (``AdaRankTrainer``'s): the scored-positions trimming may run under it."""
    method._keeps_trainer_loss = True  # type: ignore[attr-defined]
    return method


def loss_is_trainers(trainer: Trainer) -> bool:
    """Whether ``trainer``'s training loss is ``transformers.Trainer``'s own: no label smoother, no
    ``compute_loss_func`` (both read the full logits), and every ``compute_loss`` override in its class's
    MRO above ``Trainer`` marked ``keeps_trainer_loss``. False for TRL's trainers (SFTTrainer computes its
    loss, entropy and token accuracy from the whole sequence) and for any unmarked subclass: only then may
    a training step compute the head at the scored positions alone."""
    if trainer.label_smoother is not None or trainer.compute_loss_func is not None:
        return False
    for cls in type(trainer).__mro__:
        if cls is Trainer:
            return True
        method = vars(cls).get("compute_loss")
        if method is not None and not getattr(method, "_keeps_trainer_loss", False):
            return False
    return False  # not a Trainer at all


def scored_training_inputs(
    trainer: Trainer, model: nn.Module, inputs: dict[str, Any], head_model: nn.Module | None = None
) -> dict[str, Any]:
    """``inputs`` for ``trainer.compute_loss`` with the output head on the scored positions only
    (``only_scored_logits``: the same loss and gradients, fewer head rows) in a training step whose loss
    is ``Trainer``'s own (``loss_is_trainers``); ``inputs`` unchanged otherwise.

    Args:
        trainer: the Trainer computing the loss.
        model: the model ``compute_loss`` got (possibly DDP-wrapped).
        inputs: the batch.
        head_model: the module whose forward runs the head and the loss, when that is not ``model``
            itself (a PEFT LoRA model: its base model, to which PEFT hands the extra arguments).
    """
    if not model.training or not loss_is_trainers(trainer):
        return inputs
    return only_scored_logits(unwrap(model) if head_model is None else head_model, inputs)


def scored_positions_loader(trainer: Trainer, head_model: nn.Module | None, make_loader: Callable[[], Any]) -> Any:
    """``make_loader()`` (the Trainer's own ``get_train_dataloader``) with the trainer's collator wrapped in a
    ``ScoredPositionsCollator`` while the loader is built, when ``head_model`` takes scored positions and the
    loss is ``Trainer``'s own (``loss_is_trainers``): the positions are then found on the host, in the
    loader. The trainer's collator is restored either way."""
    collate = trainer.data_collator
    if loss_is_trainers(trainer) and head_model is not None and takes_scored_positions(head_model):
        trainer.data_collator = ScoredPositionsCollator(collate)
    try:
        return make_loader()
    finally:
        trainer.data_collator = collate


class AdaRankTrainer(Trainer):
    """A ``Trainer`` that adds ``orth_weight * orthogonality_penalty`` to the training loss once per
    optimizer step's worth of data, and builds AdamW with ``param_groups``.

    Also a mixin for any Trainer subclass, first in the bases: ``class AdaRankSFTTrainer(AdaRankTrainer,
    trl.SFTTrainer)`` gets the penalty (in the loss, so clipped with the task gradient), lambda's learning
    rate multiplier, allocation, shrink and resume, on top of the host's own loss. The head runs at the
    scored positions alone only under ``Trainer``'s own loss (``loss_is_trainers``), never under a
    host's ``compute_loss`` that reads the whole sequence.

    The penalty is added in ``compute_loss`` (not in ``forward``, where transformers 5.x would
    over-weight it by grad-accumulation x world size). When the Trainer does not divide the loss by
    the accumulation steps itself (models that take ``num_items_in_batch``), the penalty is divided
    here, so its gradient equals one full-batch step's whatever the accumulation; DDP averages it
    across processes, which also leaves it exact.

    Args:
        orth_weight: weight of the penalty (0 disables it).
        singular_lr_multiplier: learning-rate multiplier of the singular values.
        *args, **kwargs: as for ``transformers.Trainer``.
    """

    def __init__(
        self,
        *args: Any,
        orth_weight: float = 0.1,
        singular_lr_multiplier: float = SINGULAR_LR_MULTIPLIER,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if self.model_accepts_loss_kwargs and not _loss_counts_items(self.accelerator.unwrap_model(self.model)):
            # transformers 5.x takes any forward(**kwargs) for one that normalizes its loss by the
            # accumulated item count, then skips dividing by accumulation and multiplies by the number
            # of processes. BERT's classifiers take **kwargs but return a plain batch mean, so their
            # task gradient would be scaled by accumulation x world size: treat them as what they are.
            self.model_accepts_loss_kwargs = False
        self.orth_weight = orth_weight
        self.singular_lr_multiplier = singular_lr_multiplier
        assert self.model is not None
        if not find_adapters(self.model) and not hasattr(
            self.model, RECORD_ATTR
        ):  # an empty target list leaves a record
            raise ValueError("AdaRankTrainer got a model without adarank adapters; call inject_adapters first.")
        self._last_penalty: torch.Tensor | None = None
        self._callback = next((c for c in self.callback_handler.callbacks if isinstance(c, AdaRankCallback)), None)
        if self._callback is None:
            warnings.warn(
                "AdaRankTrainer has no AdaRankCallback: ranks will never be allocated and this trains a "
                "fixed-rank SVD LoRA. Pass callbacks=[AdaRankCallback(allocator)].",
                stacklevel=2,
            )
        else:
            self._callback.allocator.register_shrink_hook(self._rewrap_after_shrink)
            self._callback.penalty_in_loss = True  # the callback then leaves the penalty to this trainer
        self._rewrapped: nn.Module | None = None

    @property
    def _adapters(self) -> list[Any]:
        """The adapters in the model now (a shrink removes those left at rank 0)."""
        if self._callback is not None:
            return list(self._callback.allocator.adapters.values())
        assert self.model is not None
        return list(find_adapters(self.model).values())

    def _rewrap_after_shrink(self, model: nn.Module, optimizer: Any) -> None:
        """The allocator's shrink hook: DDP's reducer holds the parameters it was built with, so a DDP
        wrapper is rebuilt around the shrunk model (``training_step`` uses it from then on)."""
        wrapped = self.model_wrapped
        if isinstance(wrapped, nn.parallel.DistributedDataParallel):
            self._rewrapped = nn.parallel.DistributedDataParallel(
                wrapped.module, device_ids=wrapped.device_ids, output_device=wrapped.output_device,
                find_unused_parameters=wrapped.find_unused_parameters,
            )  # fmt: skip
            self.model_wrapped = self._rewrapped

    def training_step(self, model: nn.Module, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        """``Trainer.training_step``; after a shrink under DDP, through the rebuilt DDP wrapper."""
        if self._rewrapped is not None and isinstance(model, nn.parallel.DistributedDataParallel):
            model = self._rewrapped
        return super().training_step(model, inputs, num_items_in_batch)

    def train(  # type: ignore[override]
        self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any
    ) -> Any:
        """``Trainer.train``; when resuming, also restores the allocator's state from the checkpoint.
        ``resume_from_checkpoint=True`` picks the latest checkpoint whose allocator state is complete.

        Raises:
            FileNotFoundError: no complete checkpoint to resume from.
        """
        if resume_from_checkpoint:
            folder = (
                latest_complete_checkpoint(self.args.output_dir or ".")
                if resume_from_checkpoint is True
                else Path(str(resume_from_checkpoint))
            )
            if folder is None:
                raise FileNotFoundError(f"no complete checkpoint under `{self.args.output_dir}` to resume from.")
            if self._callback is not None:
                assert self.model is not None
                self._callback.load_checkpoint(folder, model=self.model)
            resume_from_checkpoint = str(folder)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            target = model or self.model
            assert target is not None
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, target)  # type: ignore[arg-type]
            groups = param_groups(
                target,
                self.args.learning_rate,
                self.args.weight_decay,
                self.singular_lr_multiplier,
            )
            self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    @keeps_trainer_loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        inputs = scored_training_inputs(self, model, inputs)
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not model.training or self.orth_weight == 0 or not self._adapters:
            return result
        loss: torch.Tensor
        outputs: Any
        loss, outputs = result if return_outputs else (result, None)  # type: ignore[assignment]
        final = self._callback is not None and self._callback.allocator.finalized
        penalty = orthogonality_penalty(self._adapters, live_only=final)
        self._last_penalty = penalty.detach()  # read at the next logging step: no host sync per micro-batch
        # Mirror Trainer.training_step: a loss already normalized over the accumulated batch is not
        # divided by the accumulation steps there, so the penalty must be divided here.
        normalized = self.loss_is_scaled_for_ga
        if normalized is None:
            normalized = (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None
            ) or self.compute_loss_func is not None
        divisor = self.current_gradient_accumulation_steps if normalized else 1
        term = (self.orth_weight / divisor) * penalty
        if self._callback is not None:  # importance.task_only: the scores leave its gradient out, as it
            # reaches .grad: training_step divides an unnormalized loss by the accumulation steps
            steps = 1 if normalized else self.current_gradient_accumulation_steps
            self._callback.allocator.add_penalty_gradient_(term / steps)
        loss = loss + term.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def get_train_dataloader(self) -> Any:
        """The Trainer's loader, whose collator also finds a causal LM's scored positions (on the host, in
        the loader: ``ScoredPositionsCollator``) when the loss is the model's own."""
        head = unwrap(self.model) if self.model is not None else None
        return scored_positions_loader(self, head, super().get_train_dataloader)

    def _clip_grad_norm(self, model: nn.Module) -> Any:
        """``Trainer._clip_grad_norm``; the penalty's recorded gradient share is scaled like the rest."""
        norm = super()._clip_grad_norm(model)
        if self._callback is not None and self._callback.allocator.penalty_grads:  # importance.task_only
            self._callback.allocator.scale_penalty_gradient_(clip_coefficient(norm, self.args.max_grad_norm))
        return norm

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:
            if self._last_penalty is not None:
                logs["orth_penalty"] = float(self._last_penalty)
            plan = self._callback.allocator.plan if self._callback else None
            if plan is not None:
                logs["rank_budget"] = budget_at(self.state.global_step, plan)
            logs["forward_rank"] = sum(a.live_rank() for a in self._adapters)
            trace = self._callback.allocator.trace if self._callback else []
            logs["live_rank"] = trace[-1]["live_rank"] if trace else sum(a.active_rank() for a in self._adapters)
        super().log(logs, *args, **kwargs)


def check_launch(launcher_world_size: int, trainer_world_size: int) -> None:
    """Refuse a launch whose processes do not form one job (each would train alone, unnoticed).

    Raises:
        RuntimeError: the launcher started ``launcher_world_size`` processes but training runs with
            another world size.
    """
    if launcher_world_size != trainer_world_size:
        raise RuntimeError(
            f"the launcher started {launcher_world_size} processes (WORLD_SIZE) but training runs with world "
            f"size {trainer_world_size}: each process would train alone and they would overwrite each other. "
            "On CPU launch with `torchrun --nproc_per_node N -m adarank train ...` (accelerate launch --cpu "
            "runs one process); on GPUs check that every process sees a device."
        )
