"""transformers Trainer glue: drive a RankAllocator from the Trainer's optimizer-step hook."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from adarank.allocator import RankAllocator
from adarank.config import RESUME_MARKER
from adarank.inject import find_adapters
from adarank.schedule import budget_at
from adarank.sharding import all_reduce_sum_, any_sharded, local, local_rows

ALLOCATOR_STATE = RESUME_MARKER  # written last: its presence marks a complete checkpoint
ALLOCATOR_SCORES = "adarank_scores.safetensors"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def flat_scores(scores: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Score EMAs keyed `<adapter>/<part>.<kind>`, one flat mapping for a checkpoint file."""
    return {f"{name}/{key}": t for name, parts in scores.items() for key, t in parts.items()}


def nested_scores(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``flat_scores`` undone: adapter -> its EMA buffers."""
    scores: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        name, part = key.rsplit("/", 1)
        scores.setdefault(name, {})[part] = tensor
    return scores


def latest_complete_checkpoint(folder: str | Path) -> Path | None:
    """The highest-step ``checkpoint-N`` under ``folder`` that holds the allocator state (written after
    everything else), so a checkpoint half-written by a killed process is never picked."""
    root = Path(folder)
    done = [
        (int(m.group(1)), p)
        for p in (root.iterdir() if root.is_dir() else [])
        if (m := _CHECKPOINT.match(p.name)) and (p / ALLOCATOR_STATE).is_file()
    ]
    return max(done)[1] if done else None


def check_unsharded(args: Any) -> None:
    """Refuse the Trainer set-ups adarank cannot run correctly: DeepSpeed ZeRO (gradients partitioned
    outside PyTorch's view), FSDP version 1, FSDP on CPU (the Trainer then runs with FSDP silently off,
    or refuses), and checkpoints under the Trainer's FSDP2 (the allocator's sharded state is saved only
    by adarank's own loop). FSDP2 on GPUs passes: the allocator works on sharded parameters.

    Raises:
        RuntimeError: one of the above is configured.
    """
    own_loop = "use `adarank train ... distributed.strategy=fsdp2` under torchrun (adarank's own FSDP2 loop)"
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


def trace_point(allocator: RankAllocator, step: int) -> dict[str, int]:
    """b(step) in the plan's unit, and the live rank (triplets with lambda * mask nonzero) in triplets
    and in parameters. One host sync per step for all adapters; on FSDP2-sharded adapters each process
    counts its own triplets and one all_reduce sums the counts."""
    adapters = list(allocator.adapters.values())
    counts: list[int] = []
    if adapters:
        with torch.no_grad():
            values = [a.singular_values for a in adapters]
            per_adapter = torch.stack(
                [
                    torch.count_nonzero(local(v) * a.rank_mask[local_rows(v)].to(local(v).device))
                    for v, a in zip(values, adapters, strict=True)
                ]
            )
            if any_sharded(values):
                all_reduce_sum_(per_adapter)
            counts = per_adapter.tolist()
    active = [(int(n), a.triplet_cost) for n, a in zip(counts, adapters, strict=True)]
    plan = allocator.plan
    return {
        "step": step,
        "budget": budget_at(step, plan) if plan is not None else 0,
        "live_rank": sum(r for r, _ in active),
        "live_params": sum(r * c for r, c in active),
    }


class AdaRankCallback(TrainerCallback):
    """Runs ``allocator.step`` once per optimizer step, in ``on_optimizer_step``.

    transformers 5.x calls ``on_optimizer_step`` after ``optimizer.step()`` and before
    ``zero_grad()``: weights are post-step and the gradients are the step's accumulated, clipped
    and (under DDP) all-reduced ones, so every process computes identical scores and masks. The
    paper pairs post-step weights with that step's gradients; ``on_pre_optimizer_step`` would pair
    them with pre-step weights instead, where lambda is still exactly 0 at step 1.

    The number of steps T comes from the Trainer (``state.max_steps``). At the end of training
    the callback raises if the final masks were never fixed, instead of silently leaving LoRA.
    ``history`` holds every masking event (step, budget, live, threshold, per-module ranks);
    ``trace`` one entry per optimizer step from step 0: b(t) and the live rank, the triplets with
    lambda * mask nonzero (``trace_point``).
    """

    def __init__(self, allocator: RankAllocator):
        self.allocator = allocator
        self.history: list[dict[str, Any]] = []
        self.trace: list[dict[str, int]] = []
        self.shrunk_at: int | None = None
        """The step after which the adapters were shrunk to their live triplets (``budget.shrink``)."""
        self.rewraps_ddp = False
        """Set by AdaRankTrainer, which rebuilds a DDP wrapper around a shrunk model."""

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
        self.allocator.set_total_steps(state.max_steps)
        if self.allocator.budget.shrink and self.allocator.plan and self.allocator.plan.adapts:
            if getattr(args, "fsdp", None):
                print("adarank: budget.shrink is not applied under FSDP2 (yet): the final phase keeps all triplets.")
            elif args.world_size > 1 and not self.rewraps_ddp:
                raise RuntimeError(
                    "budget.shrink under DDP needs AdaRankTrainer (it rebuilds the DDP wrapper around the shrunk "
                    "model); with another Trainer set budget.shrink=false."
                )
        if not self.trace:  # not resumed: the start, at init_rank with lambda = 0
            self.trace.append(trace_point(self.allocator, state.global_step))

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # global_step counts completed steps and is incremented after this hook.
        event = self.allocator.step(state.global_step + 1, kwargs.get("optimizer"))
        if event is not None:
            self.history.append(event)
        model = kwargs.get("model")
        if self._shrink_due(args) and model is not None:
            from adarank.shrink import shrink_

            shrink_(model, self.allocator, kwargs.get("optimizer"))
            self.shrunk_at = state.global_step + 1
        self.trace.append(trace_point(self.allocator, state.global_step + 1))

    def _shrink_due(self, args: Any) -> bool:
        """Shrink once, right after the final masks are fixed, when budget.shrink is on (not under FSDP)."""
        allocator = self.allocator
        return (
            allocator.budget.shrink and allocator.finalized and not allocator.shrunk and not getattr(args, "fsdp", None)
        )

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.save_checkpoint(Path(args.output_dir or ".") / f"checkpoint-{state.global_step}")

    def save_checkpoint(self, folder: Path) -> None:
        """Write the allocator state (score EMAs as safetensors; counters, plan and history as JSON,
        last, atomically) into a Trainer checkpoint folder. Masks live in the model's weights."""
        from safetensors.torch import save_file

        state = self.allocator.state_dict()
        scores = {key: t.contiguous() for key, t in flat_scores(state.pop("scores")).items()}
        folder.mkdir(parents=True, exist_ok=True)
        save_file(scores, str(folder / ALLOCATOR_SCORES))
        tmp = folder / (ALLOCATOR_STATE + ".tmp")
        payload = {**state, "history": self.history, "trace": self.trace, "shrunk_at": self.shrunk_at}
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, folder / ALLOCATOR_STATE)

    def load_checkpoint(self, folder: Path, model: Any = None) -> None:
        """Restore what ``save_checkpoint`` wrote (reads safetensors and JSON only). A checkpoint taken
        after the final-phase shrink first gives ``model`` the shrunk shapes, before its weights load.

        Raises:
            FileNotFoundError: the folder holds no complete allocator state.
        """
        from safetensors.torch import load_file

        if not (folder / ALLOCATOR_STATE).is_file():
            raise FileNotFoundError(
                f"`{folder}` holds no adarank allocator state ({ALLOCATOR_STATE}): it was not written by "
                "AdaRankCallback, or the process died while writing it; resume from an earlier checkpoint."
            )
        state = json.loads((folder / ALLOCATOR_STATE).read_text())
        scores = nested_scores(load_file(str(folder / ALLOCATOR_SCORES)))
        self.history = state.pop("history")
        self.trace = state.pop("trace", [])  # absent in checkpoints written before the trace existed
        self.shrunk_at = state.pop("shrunk_at", None)
        if state.get("shrunk_ranks") and not self.allocator.shrunk:
            if model is None:
                raise ValueError("this checkpoint was taken after the shrink: pass the model to rebuild its shapes")
            from adarank.shrink import shrink_to_ranks_

            shrink_to_ranks_(model, self.allocator, state["shrunk_ranks"])
        self.allocator.load_state_dict({**state, "scores": scores})

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.allocator.check_finished()
