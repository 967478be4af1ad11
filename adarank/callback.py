"""transformers Trainer glue: drive a RankAllocator from the Trainer's optimizer-step hook."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from adarank.allocator import RankAllocator
from adarank.inject import find_adapters


class AdaRankCallback(TrainerCallback):
    """Runs ``allocator.step`` once per optimizer step, in ``on_optimizer_step``.

    transformers 5.x calls ``on_optimizer_step`` after ``optimizer.step()`` and before
    ``zero_grad()``: weights are post-step and the gradients are the step's accumulated, clipped
    and (under DDP) all-reduced ones, so every process computes identical scores and masks. The
    paper pairs post-step weights with that step's gradients; ``on_pre_optimizer_step`` would pair
    them with pre-step weights instead, where lambda is still exactly 0 at step 1.

    The number of steps T comes from the Trainer (``state.max_steps``). At the end of training
    the callback raises if the final masks were never fixed, instead of silently leaving LoRA.
    ``history`` holds every masking event (step, budget, live, threshold, per-module ranks).
    """

    def __init__(self, allocator: RankAllocator):
        self.allocator = allocator
        self.history: list[dict[str, Any]] = []

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs.get("model")
        if model is not None:
            in_model = {id(a) for a in find_adapters(model).values()}
            if not in_model or any(id(a) not in in_model for a in self.allocator.adapters.values()):
                raise RuntimeError(
                    "the allocator's adapters are not in the model this Trainer trains: build the "
                    "RankAllocator from inject_adapters(model, ...) on the same model object."
                )
        self.allocator.set_total_steps(state.max_steps)

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # global_step counts completed steps and is incremented after this hook.
        event = self.allocator.step(state.global_step + 1, kwargs.get("optimizer"))
        if event is not None:
            self.history.append(event)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.allocator.check_finished()
