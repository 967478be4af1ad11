"""The allocator's part of a checkpoint, written the same way by every driver (adarank's engine and
``AdaRankCallback`` in a Trainer checkpoint): the score EMAs as safetensors, then the rest of
``RankAllocator.state_dict()`` (with the driver's own extras) as JSON, last and atomically, so that its
presence marks a complete checkpoint (``latest_complete_checkpoint``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarank.allocator import RankAllocator
from adarank.config import RESUME_MARKER

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
