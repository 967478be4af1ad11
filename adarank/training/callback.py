"""transformers Trainer glue: drive a RankAllocator's hooks from the Trainer's callback events."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from adarank.core.allocator import RankAllocator
from adarank.core.inject import find_adapters
from adarank.core.masking import trace_point
from adarank.core.regularization import orthogonality_penalty
from adarank.training.checkpoint import (
    ALLOCATOR_SCORES,
    ALLOCATOR_STATE,
    flat_scores,
    latest_complete_checkpoint,
    load_allocator_state,
    nested_scores,
    save_allocator_state,
)

logger = logging.get_logger(__name__)

__all__ = [
    "ALLOCATOR_SCORES",
    "ALLOCATOR_STATE",
    "AdaRankCallback",
    "check_unsharded",
    "flat_scores",
    "latest_complete_checkpoint",
    "nested_scores",
    "trace_point",
]


def check_unsharded(args: Any) -> None:
    """Refuse the Trainer set-ups adarank cannot run correctly: DeepSpeed ZeRO (gradients partitioned
    outside PyTorch's view), FSDP version 1, FSDP on CPU (the Trainer then runs with FSDP silently off,
    or refuses), and checkpoints under the Trainer's FSDP2 (the allocator's sharded state is saved only
    by adarank's own engine). FSDP2 on GPUs passes: the allocator works on sharded parameters.

    Raises:
        RuntimeError: one of the above is configured.
    """
    own_loop = "use `adarank train ... distributed.strategy=fsdp2` under torchrun (adarank's own engine)"
    if getattr(args, "deepspeed", None):
        raise RuntimeError(
            "adarank does not support DeepSpeed ZeRO: gradients are partitioned, so importance scores "
            f"would differ by process. Use DDP (torchrun), or {own_loop}."
        )
    if not getattr(args, "fsdp", None):
        return
    version = int((getattr(args, "fsdp_config", None) or {}).get("version", 2))
    if version != 2:
        raise RuntimeError(
            f"adarank supports FSDP2 only, not FSDP version {version}: set fsdp_config={{'version': 2}}."
        )
    if getattr(args, "use_cpu", False) or not torch.cuda.is_available():
        raise RuntimeError(
            "the Trainer's FSDP2 runs on GPUs only: on CPU transformers runs it as plain multi-process training "
            f"with FSDP silently off. On CPU {own_loop}."
        )
    if getattr(args, "save_strategy", "no") != "no":
        raise RuntimeError(
            "checkpoints of the allocator's sharded state are not written under the Trainer's FSDP2: set "
            f"save_strategy='no', or for resumable sharded runs {own_loop}."
        )


class AdaRankCallback(TrainerCallback):
    """Drives the allocator's hooks from the Trainer: ``begin`` at train begin, ``step`` once per optimizer
    step in ``on_optimizer_step``, its state into every checkpoint, ``check_finished`` at the end.

    transformers 5.x calls ``on_optimizer_step`` after ``optimizer.step()`` and before
    ``zero_grad()``: weights are post-step and the gradients are the step's accumulated, clipped
    and (under DDP) all-reduced ones, so every process computes identical scores and masks. The
    paper pairs post-step weights with that step's gradients; ``on_pre_optimizer_step`` would pair
    them with pre-step weights instead, where lambda is still exactly 0 at step 1.

    The number of steps T comes from the Trainer (``state.max_steps``). What happened (masking events,
    the per-step trace) is the allocator's (``allocator.history``, ``allocator.trace``). With
    ``budget.shrink`` under DDP the model's wrapper must be rebuilt after the shrink: ``AdaRankTrainer``
    does it (a shrink hook); with another Trainer the callback refuses that set-up at train begin.

    The orthogonality penalty: under ``AdaRankTrainer`` (or a subclass mixing it into another Trainer) it
    is the trainer's, in the loss, clipped with the task gradient. Under any other Trainer (the callback
    alone, e.g. ``SFTTrainer(..., callbacks=[AdaRankCallback(allocator)])``) the callback adds
    ``orth_weight`` x its gradient to P and Q once per optimizer step in ``on_pre_optimizer_step``: after
    gradient clipping (so it is not clipped) and before the optimizer step. lambda's learning-rate
    multiplier needs ``AdaRankTrainer``'s optimizer; without it the callback warns at train begin.

    Args:
        allocator: the allocator over the adapters of the model the Trainer trains.
        orth_weight: the penalty's weight when the callback applies it (without ``AdaRankTrainer``).
    """

    def __init__(self, allocator: RankAllocator, orth_weight: float = 0.1):
        self.allocator = allocator
        self.orth_weight = orth_weight
        self.penalty_in_loss = False
        """Set by ``AdaRankTrainer``: the trainer adds the penalty to its loss, so the callback does not."""

    @property
    def history(self) -> list[dict[str, Any]]:
        """The allocator's masking events (``allocator.history``)."""
        return self.allocator.history

    @property
    def trace(self) -> list[dict[str, int]]:
        """The allocator's per-step trace (``allocator.trace``)."""
        return self.allocator.trace

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        check_unsharded(args)
        model = kwargs.get("model")
        if model is not None:
            in_model = {id(a) for a in find_adapters(model).values()}
            mine = [id(a) for a in self.allocator.adapters.values()]
            if any(i not in in_model for i in mine) or (in_model and not mine):
                raise RuntimeError(
                    "the allocator's adapters are not in the model this Trainer trains: build the "
                    "RankAllocator from inject_adapters(model, ...) on the same model object."
                )
        if not self.penalty_in_loss:
            applied = (
                f"applies the orthogonality penalty (weight {self.orth_weight:g}) after gradient clipping"
                if self.orth_weight
                else "applies no orthogonality penalty (orth_weight=0)"
            )
            message = (
                f"AdaRankCallback without AdaRankTrainer: the callback {applied}, and lambda gets no "
                "learning-rate multiplier (the host trainer's optimizer). For the whole method mix AdaRankTrainer "
                "into your trainer, first in the bases: `class MyTrainer(AdaRankTrainer, SFTTrainer)`."
            )
            warnings.warn(message, stacklevel=2)
            logger.warning(message)
        plan = self.allocator.begin(state.max_steps)
        if self.allocator.budget.shrink and plan.adapts and args.world_size > 1 and not self.allocator.has_shrink_hooks:
            raise RuntimeError(
                "budget.shrink under DDP needs AdaRankTrainer (it rebuilds the DDP wrapper around the shrunk "
                "model); with another Trainer set budget.shrink=false."
            )

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Without ``AdaRankTrainer``: add ``orth_weight`` x the penalty's gradient to every adapter's P and
        Q, once for the optimizer step (the Trainer has clipped and, under DDP, reduced the task gradient;
        P and Q are the same on every process, so is this). ``autograd.grad``, not ``backward``: no DDP
        gradient hook fires."""
        adapters = list(self.allocator.adapters.values())
        if self.penalty_in_loss or not self.orth_weight or not adapters:
            return
        with torch.enable_grad():
            term = self.orth_weight * orthogonality_penalty(adapters, live_only=self.allocator.finalized)
            self.allocator.add_penalty_gradient_(term)  # importance.task_only: left out of the scores
            params = [p for a in adapters for p in (a.left_vectors, a.right_vectors)]
            grads = torch.autograd.grad(term, params)
        for param, grad in zip(params, grads, strict=True):
            if param.grad is None:
                param.grad = grad.to(param.dtype)
            else:
                param.grad.add_(grad.to(param.grad.dtype))

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # global_step counts completed steps and is incremented after this hook.
        self.allocator.step(state.global_step + 1, kwargs.get("optimizer"), kwargs.get("model"))

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.save_checkpoint(Path(args.output_dir or ".") / f"checkpoint-{state.global_step}")

    def save_checkpoint(self, folder: Path) -> None:
        """Write the allocator's state into a Trainer checkpoint folder (``save_allocator_state``)."""
        save_allocator_state(folder, self.allocator)

    def load_checkpoint(self, folder: Path, model: Any = None) -> None:
        """Restore the allocator's state from a checkpoint folder; one taken after the shrink first gives
        ``model`` the shrunk shapes, before its weights load.

        Raises:
            FileNotFoundError: the folder holds no complete allocator state.
        """
        load_allocator_state(folder, self.allocator, model)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.allocator.check_finished()
