"""Checkpoints. The allocator's part is written the same way by every driver (adarank's engine and
``AdaRankCallback`` in a Trainer checkpoint): the score EMAs as safetensors, then the rest of
``RankAllocator.state_dict()`` (with the driver's own extras) as JSON, last and atomically, so that its
presence marks a complete checkpoint (``latest_complete_checkpoint``). The engine's checkpoint adds, on
process 0, the trainable parameters, rank masks, optimizer, scheduler and log (``engine_state.pt``) and,
on every process, its RNG state; the two newest complete checkpoints are kept."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from adarank.config import ENGINE_STATE, RESUME_MARKER
from adarank.core.allocator import RankAllocator

ALLOCATOR_STATE = RESUME_MARKER  # written last: its presence marks a complete checkpoint
ALLOCATOR_SCORES = "adarank_scores.safetensors"
KEEP_CHECKPOINTS = 2
"""Complete checkpoints kept: the newest may be half-written when a process dies; the one before is whole."""
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


def save_allocator_state(folder: Path, allocator: RankAllocator, extra: dict[str, Any] | None = None) -> None:
    """Write the allocator's state into ``folder`` (created if needed): scores first, then the JSON
    marker atomically. ``extra`` (JSON-serialisable) is stored beside it and returned on load."""
    from safetensors.torch import save_file

    state = allocator.state_dict()
    scores = {key: t.detach().cpu().contiguous() for key, t in flat_scores(state.pop("scores")).items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(scores, str(folder / ALLOCATOR_SCORES))
    tmp = folder / (ALLOCATOR_STATE + ".tmp")
    tmp.write_text(json.dumps({**state, "extra": extra or {}}))
    os.replace(tmp, folder / ALLOCATOR_STATE)


def load_allocator_state(folder: Path, allocator: RankAllocator, model: nn.Module | None = None) -> dict[str, Any]:
    """Restore what ``save_allocator_state`` wrote (safetensors and JSON only); a state taken after the
    shrink first gives ``model`` the shrunk shapes. Returns the driver's ``extra``.

    Raises:
        FileNotFoundError: the folder holds no complete allocator state.
    """
    from safetensors.torch import load_file

    if not (folder / ALLOCATOR_STATE).is_file():
        raise FileNotFoundError(
            f"`{folder}` holds no adarank allocator state ({ALLOCATOR_STATE}): it was not written by adarank, "
            "or the process died while writing it; resume from an earlier checkpoint."
        )
    state = json.loads((folder / ALLOCATOR_STATE).read_text())
    scores = nested_scores(load_file(str(folder / ALLOCATOR_SCORES))) if (folder / ALLOCATOR_SCORES).is_file() else {}
    extra = state.pop("extra", {})
    allocator.load_state_dict({**state, "scores": scores}, model)
    return extra


def _trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint holds of the model: trainable parameters and rank masks, by name."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in trainable or k.endswith("rank_mask")}


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_checkpoint(
    folder: Path, model: nn.Module, optimizer: Any, scheduler: Any, allocator: RankAllocator, progress: dict[str, Any]
) -> None:
    """Write a checkpoint: on process 0 the engine's state, on every process its RNG state, then on
    process 0 the allocator's state last (the completion marker). A collective under torchrun."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    folder.mkdir(parents=True, exist_ok=True)
    # every process reads the state dict: under FSDP2 it reshards a root left unsharded after an
    # evaluation's forward, and a reshard on one process alone desynchronises the next all-gathers
    trained = _trained_state(model)
    if rank == 0:
        payload = {
            "model": {k: v.detach().cpu() for k, v in trained.items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            **progress,  # the engine's log_history, train_loss and global_step
        }
        torch.save(payload, folder / (ENGINE_STATE + ".tmp"))
        os.replace(folder / (ENGINE_STATE + ".tmp"), folder / ENGINE_STATE)
    torch.save(_rng_state(), folder / f"rng_{rank}.pt")
    _barrier(world)
    if rank == 0:
        save_allocator_state(folder, allocator, {"engine": ENGINE_STATE})
        _drop_old_checkpoints(folder.parent, keep=KEEP_CHECKPOINTS)
    _barrier(world)


def _drop_old_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints under ``root`` (incomplete ones, from a
    killed process, are overwritten when their step comes again)."""
    complete = sorted(
        (int(p.name.split("-")[-1]), p) for p in root.glob("checkpoint-*") if (p / ALLOCATOR_STATE).is_file()
    )
    for _, folder in complete[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)


def load_checkpoint(folder: Path, model: nn.Module, allocator: RankAllocator) -> dict[str, Any]:
    """Restore the allocator (rebuilding shrunk shapes first), the model's trainable tensors and this
    process's RNG from ``folder``; returns the engine's payload (optimizer, scheduler, log), to be
    loaded into an optimizer built afterwards from the (possibly shrunk) model.

    Raises:
        FileNotFoundError: the checkpoint was not written by this engine (adarank 0.1's Trainer engine).
    """
    if not (folder / ENGINE_STATE).is_file():
        raise FileNotFoundError(
            f"`{folder}` was written by adarank 0.1 (its Trainer or FSDP2 loop), whose checkpoints this "
            "engine cannot continue; resume it with adarank 0.1.0, or start the run again."
        )
    load_allocator_state(folder, allocator, model)
    device = next(p.device for p in model.parameters() if p.requires_grad)
    payload = torch.load(folder / ENGINE_STATE, map_location="cpu", weights_only=True)
    live = _trained_state(model)
    if set(live) != set(payload["model"]):
        raise ValueError(
            f"checkpoint `{folder}` holds other trainable tensors than this model: "
            f"{sorted(set(live) ^ set(payload['model']))[:3]}"
        )
    with torch.no_grad():
        for name, tensor in live.items():
            tensor.copy_(payload["model"][name].to(device))
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng = folder / f"rng_{rank}.pt"
    if rng.is_file():
        state = torch.load(rng, weights_only=True)
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
    return payload
