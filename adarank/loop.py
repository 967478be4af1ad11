"""adarank's own training loop, for what the transformers Trainer cannot do on every device: FSDP2.

``train_loop`` trains a model with adarank adapters under torchrun with one of three strategies:
``fsdp2`` (``fully_shard`` per transformer block, then the root: parameters, gradients and optimizer
state sharded on dim 0 across processes; CPU/gloo or CUDA/nccl), ``ddp`` (DistributedDataParallel) or
``none`` (one process, no wrapper). The allocator runs on the sharded parameters (see
``adarank.sharding``), so every process holds identical masks.

The data order is a function of (seed, step) alone: the optimizer step s of every strategy and world
size trains on the same global batch, split across processes in rank order, so runs with different
world sizes or strategies can be compared batch for batch, and a resumed run continues the stream.
AdamW with ``param_groups``, linear warm-up then linear decay, gradients clipped to norm 1 (the
Trainer's defaults). Checkpoints (``save_steps``) are distributed checkpoints (torch.distributed.
checkpoint): every process writes its own shards of the trainable parameters, masks, optimizer state
and score EMAs; process 0 writes the allocator's counters, history and trace last, as the marker of a
complete checkpoint (``latest_complete_checkpoint``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn

from adarank.allocator import RankAllocator
from adarank.callback import ALLOCATOR_STATE, flat_scores, latest_complete_checkpoint, nested_scores, trace_point
from adarank.importance import init_importance
from adarank.regularization import orthogonality_penalty
from adarank.schedule import budget_at
from adarank.sharding import full, is_fully_sharded, shard_model, unwrap
from adarank.tasks import only_scored_logits
from adarank.trainer import clip_coefficient, param_groups

STRATEGIES = ("fsdp2", "ddp", "none")


@dataclass(frozen=True)
class LoopConfig:
    """What ``train_loop`` needs besides the model, the allocator and the data."""

    steps: int
    batch_size: int
    """Examples per process per micro-batch (the global batch is batch_size x world size x grad_accum_steps)."""
    learning_rate: float
    grad_accum_steps: int = 1
    singular_lr_multiplier: float = 10.0
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    orth_weight: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    strategy: str = "fsdp2"
    save_steps: int | None = None
    checkpoint_dir: str | None = None
    """Where checkpoint-N folders go (required with save_steps or resume)."""
    resume: bool = False
    """Continue from the latest complete checkpoint under checkpoint_dir."""
    log_steps: int = 1
    eval_steps: int | None = None
    """Call ``train_loop``'s ``evaluate`` every this many steps (on every process, in lockstep)."""


@dataclass
class LoopResult:
    """What a finished loop returns: the Trainer-like log history, the allocator's masking events and
    per-step trace, the mean training loss and the steps run."""

    log_history: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    trace: list[dict[str, int]] = field(default_factory=list)
    train_loss: float = float("nan")
    global_step: int = 0
    optimizer: Any = field(default=None, repr=False)
    """The AdamW the loop stepped (its state is sharded like the parameters under FSDP2)."""


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this torchrun process, initialising the default process group
    (nccl on CUDA, gloo on CPU) if needed.

    Raises:
        RuntimeError: not launched by torchrun (no WORLD_SIZE / RANK in the environment).
    """
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        raise RuntimeError("adarank's training loop runs under torchrun: `torchrun --nproc_per_node N ...`")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return dist.get_rank(), dist.get_world_size(), device


def close_distributed() -> None:
    """Destroy the default process group, if one is up, once every process has reached this point (a
    barrier first); call it on every process after the last collective. Without it a gloo process can
    abort while the interpreter shuts down (SIGABRT, "terminate called without an active exception":
    gloo's threads still hold work whose tensors reference Python objects; pytorch/pytorch#179291),
    so a finished torchrun job may exit with -6."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def exit_distributed(code: int = 0) -> NoReturn:
    """End a torchrun process: ``close_distributed()``, flush stdout and stderr, then ``os._exit(code)``,
    skipping the interpreter's shutdown. The process group's destruction alone did not stop gloo's
    abort at shutdown on CI (1 in a few hundred runs); with nothing left to run, skipping the shutdown
    removes the window. Only for a process whose work (files, logs, wandb) is finished."""
    close_distributed()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def batch_indices(
    n_rows: int, seed: int, step: int, micro: int, rank: int, world: int, per_process: int, accum: int
) -> list[int]:
    """Row indices of micro-batch ``micro`` of optimizer step ``step`` (1-based) on process ``rank``.

    The rows form one stream: a fresh permutation of the training set per epoch (seed + epoch), read
    in consecutive global batches of per_process x world x accum rows; micro-batch ``micro`` of a step
    is its next per_process x world rows, process ``rank`` takes its rank-th slice of them.
    """
    global_batch = per_process * world * accum
    start = (step - 1) * global_batch + micro * per_process * world + rank * per_process
    out: list[int] = []
    position = start
    while len(out) < per_process:
        epoch, offset = divmod(position, n_rows)
        order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed + epoch))
        take = min(per_process - len(out), n_rows - offset)
        out += order[offset : offset + take].tolist()
        position += take
    return out


def _wrap(model: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy `{strategy}` is not one of {', '.join(STRATEGIES)}")
    if strategy == "fsdp2":  # fully_shard moves each process's shards to its device, never the whole model
        if not is_fully_sharded(model):  # adarank train shards while loading (sharding.shard_from_rank0_)
            shard_model(model)
        return model
    model.to(device)
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def _linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total`` (the Trainer's `linear`)."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _checkpoint_state(inner: nn.Module, allocator: RankAllocator) -> dict[str, Any]:
    """The tensors a checkpoint holds, by name: trainable parameters and rank masks (sharded as in
    training), and the score EMAs. Loading writes into these same tensors in place."""
    trainable = {n for n, p in inner.named_parameters() if p.requires_grad}
    model_state = {k: v for k, v in inner.state_dict().items() if k in trainable or k.endswith("rank_mask")}
    return {"model": model_state, "scores": flat_scores(allocator.scores)}


def save_checkpoint(
    folder: Path, inner: nn.Module, optimizer: Any, scheduler: Any, allocator: RankAllocator, result: LoopResult
) -> None:
    """Write a distributed checkpoint (every process its shards), then, on process 0, the allocator's
    JSON state last: its presence marks the checkpoint complete. A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = _checkpoint_state(inner, allocator)
    state["optimizer"] = get_optimizer_state_dict(inner, optimizer)
    dcp.save(state, checkpoint_id=str(folder))
    torch.save(torch.get_rng_state(), folder / f"rng_{dist.get_rank()}.pt")
    dist.barrier()
    if dist.get_rank() == 0:
        payload = {
            **{k: v for k, v in allocator.state_dict().items() if k != "scores"},
            "scored": bool(allocator.scores),
            "scheduler": scheduler.state_dict(),
            "history": result.history,
            "trace": result.trace,
            "log_history": result.log_history,
            "train_loss": result.train_loss,
        }
        tmp = folder / (ALLOCATOR_STATE + ".tmp")
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, folder / ALLOCATOR_STATE)
    dist.barrier()


def load_checkpoint(
    folder: Path, inner: nn.Module, optimizer: Any, scheduler: Any, allocator: RankAllocator
) -> LoopResult:
    """Restore what ``save_checkpoint`` wrote into the live (sharded) tensors. A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    payload = json.loads((folder / ALLOCATOR_STATE).read_text())
    if payload["scored"]:
        allocator.scores = {n: init_importance(a) for n, a in allocator.adapters.items()}
    state = _checkpoint_state(inner, allocator)
    state["optimizer"] = get_optimizer_state_dict(inner, optimizer)
    dcp.load(state, checkpoint_id=str(folder))
    with torch.no_grad():  # the model's state_dict tensors may be copies: write the loaded values back
        for name, tensor in inner.state_dict().items():
            loaded = state["model"].get(name)
            if loaded is not None and loaded is not tensor:
                tensor.copy_(loaded)
    set_optimizer_state_dict(inner, optimizer, state["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    rng = folder / f"rng_{dist.get_rank()}.pt"
    if rng.is_file():
        torch.set_rng_state(torch.load(rng))
    allocator.load_state_dict({**payload, "scores": nested_scores(state["scores"])})  # the tensors loaded in place
    return LoopResult(
        log_history=payload["log_history"],
        history=payload["history"],
        trace=payload["trace"],
        train_loss=payload["train_loss"],
        global_step=int(payload["last_step"]),
    )


def train_loop(
    model: nn.Module,
    allocator: RankAllocator,
    dataset: Any,
    collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
    config: LoopConfig,
    on_step: Callable[[int, RankAllocator], None] | None = None,
    evaluate: Callable[[], dict[str, float]] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[nn.Module, LoopResult]:
    """Train ``model`` (adapters injected, ``allocator`` built on them) for ``config.steps`` optimizer
    steps under torchrun; returns the wrapped model (sharded in place for fsdp2, a DDP wrapper for ddp)
    and the result. ``on_step(step, allocator)`` runs after each step's allocation on every process.
    Every ``config.eval_steps`` steps ``evaluate()`` runs on every process (the model in eval mode is
    the caller's to set) and its scores join the log as ``eval_<name>``; ``on_log(entry)`` sees every
    log entry (training and evaluation) on every process. The process group stays up for the caller's
    own collectives (exports); end with ``close_distributed()``.

    Raises:
        RuntimeError: not under torchrun; or the allocation did not finish (``check_finished``).
        FileNotFoundError: ``resume`` without a complete checkpoint.
    """
    rank, world, device = init_distributed()
    cfg = config
    allocator.set_total_steps(cfg.steps)
    wrapped = _wrap(model, cfg.strategy, device)
    inner = unwrap(wrapped)
    adapters = list(allocator.adapters.values())
    optimizer = torch.optim.AdamW(param_groups(inner, cfg.learning_rate, cfg.weight_decay, cfg.singular_lr_multiplier))
    scheduler = _linear_schedule(optimizer, int(cfg.warmup_ratio * cfg.steps), cfg.steps)
    checkpoints = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    result = LoopResult()
    if cfg.resume:
        folder = latest_complete_checkpoint(checkpoints) if checkpoints else None
        if folder is None:
            raise FileNotFoundError(f"no complete checkpoint under `{checkpoints}` to resume from.")
        result = load_checkpoint(folder, inner, optimizer, scheduler, allocator)
    else:
        result.trace.append(trace_point(allocator, 0))
    trainable = [p for p in inner.parameters() if p.requires_grad]
    loss_sum = 0.0 if not cfg.resume else result.train_loss * result.global_step
    window: list[float] = []
    wrapped.train()
    for step in range(result.global_step + 1, cfg.steps + 1):
        step_loss = torch.zeros((), device=device)
        penalty = None
        for micro in range(cfg.grad_accum_steps):
            rows = batch_indices(len(dataset), cfg.seed, step, micro, rank, world, cfg.batch_size, cfg.grad_accum_steps)
            batch = {k: v.to(device) for k, v in collate([dataset[i] for i in rows]).items()}
            loss = wrapped(**only_scored_logits(wrapped, batch)).loss / cfg.grad_accum_steps
            step_loss += loss.detach()
            if cfg.orth_weight and adapters:
                penalty = orthogonality_penalty(adapters, live_only=allocator.finalized)
                term = (cfg.orth_weight / cfg.grad_accum_steps) * penalty
                allocator.add_penalty_gradient_(term)  # importance.task_only: left out of the scores
                loss = loss + term.to(loss.dtype)
            loss.backward()
        norm = full(torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)) if trainable else torch.zeros(())
        if allocator.penalty_grads:  # importance.task_only on a scoring step (no host sync otherwise)
            allocator.scale_penalty_gradient_(clip_coefficient(float(norm), cfg.max_grad_norm))
        optimizer.step()
        scheduler.step()
        event = allocator.step(step, optimizer)
        if event is not None:
            result.history.append(event)
        result.trace.append(trace_point(allocator, step))
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(step, allocator)
        dist.all_reduce(step_loss)  # the global batch's loss (one scalar per step)
        loss_value = float(step_loss) / world
        loss_sum += loss_value
        window.append(loss_value)
        if step % cfg.log_steps == 0 or step == cfg.steps:
            entry = {
                "loss": sum(window) / len(window),
                "grad_norm": float(norm),
                "learning_rate": scheduler.get_last_lr()[0],
                "rank_budget": budget_at(step, allocator.plan) if allocator.plan else 0,
                "forward_rank": sum(a.live_rank() for a in adapters),
                "live_rank": result.trace[-1]["live_rank"],
                "step": step,
            }
            if penalty is not None:  # the step's own (last micro-batch's), before the optimizer moved P and Q
                entry["orth_penalty"] = float(penalty.detach())
            window = []
            _log(result, entry, rank, on_log)
        if evaluate is not None and cfg.eval_steps and step % cfg.eval_steps == 0:
            scores = evaluate()
            _log(result, {**{f"eval_{k}": v for k, v in scores.items()}, "step": step}, rank, on_log)
        result.global_step = step
        result.train_loss = loss_sum / step
        if checkpoints is not None and cfg.save_steps and step % cfg.save_steps == 0:
            save_checkpoint(checkpoints / f"checkpoint-{step}", inner, optimizer, scheduler, allocator, result)
    allocator.check_finished()
    result.optimizer = optimizer
    return wrapped, result


def _log(result: LoopResult, entry: dict[str, Any], rank: int, on_log: Callable[[dict[str, Any]], None] | None) -> None:
    """Append ``entry`` to the log history, print it on process 0 and hand it to ``on_log``."""
    result.log_history.append(entry)
    if rank == 0:
        print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in entry.items()}), flush=True)
    if on_log is not None:
        on_log(entry)


@torch.no_grad()
def classify_split(
    model: nn.Module,
    dataset: Any,
    collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
) -> dict[str, float]:
    """Accuracy, macro-F1 and mean cross-entropy (``loss``) of a classifier on every row of ``dataset``
    (with `labels`). Under FSDP2 every process must call it on the same rows: the forward passes gather
    the shards."""
    import numpy as np

    from adarank.tasks import evaluating, macro_f1

    device = next(model.parameters()).device
    predicted, gold, loss = [], [], 0.0
    with evaluating(model):
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            labels = batch.pop("labels")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            loss += float(nn.functional.cross_entropy(logits.float().cpu(), labels, reduction="sum"))
            predicted.append(logits.argmax(-1).cpu().numpy())
            gold.append(labels.numpy())
    p, g = np.concatenate(predicted), np.concatenate(gold)
    return {"accuracy": float((p == g).mean()), "macro_f1": macro_f1(p, g), "loss": loss / max(1, len(g))}
