"""adarank's training engine: the one loop behind ``adarank train``, for every strategy.

``train_loop`` trains a model with adarank adapters in one process or under torchrun, with one of three
strategies: ``none`` (one process), ``ddp`` (every process holds the whole model) or ``fsdp2`` (the
frozen base sharded with ``fully_shard`` per transformer block, then the root; CPU/gloo or CUDA/nccl).
In every strategy the trainable parameters (adapters, a new head) are whole on every process and their
gradients are averaged across processes in one all-reduce per optimizer step, after the micro-batches
are accumulated: the allocator, the shrink and the checkpoints see plain tensors everywhere, so every
feature works the same in every strategy, and every process holds identical masks. (Adapters are a
small fraction of the model; FSDP2's saving is the base's weights, which are sharded.)

The data order is a function of (seed, step) alone: the optimizer step s of every strategy and world
size trains on the same global batch, split across processes in rank order, so runs with different
world sizes or strategies can be compared batch for batch, and a resumed run continues the stream.
AdamW with ``param_groups``, linear warm-up then linear decay, gradients clipped to norm 1 (the
Trainer's defaults). The allocator is driven through its hooks (``RankAllocator.begin``,
``add_penalty_gradient_``, ``scale_penalty_gradient_``, ``step``, ``check_finished``). The loss of a
step is the mean of its micro-batches' own losses (each the model's mean over its tokens or rows), plus
the orthogonality penalty; the Trainer weighted a causal LM's tokens equally across micro-batches and
processes instead (``num_items_in_batch``), which differs when micro-batches hold different numbers of
scored tokens. The logged ``loss`` includes the penalty, as the Trainer's did.

Checkpoints (``save_steps``): process 0 writes the trainable parameters, rank masks, optimizer,
scheduler and log (``engine_state.pt``), every process its RNG state, then process 0 the allocator's
state last (``adarank.training.checkpoint``), whose presence marks the checkpoint complete. Resuming from one
continues bitwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from adarank.config import SINGULAR_LR_MULTIPLIER
from adarank.core.allocator import RankAllocator
from adarank.core.optim import clip_coefficient, param_groups
from adarank.core.regularization import orthogonality_penalty
from adarank.core.schedule import budget_at
from adarank.core.sharding import is_fully_sharded, shard_model, unwrap
from adarank.training.batches import only_scored_logits
from adarank.training.checkpoint import latest_complete_checkpoint, load_checkpoint, save_checkpoint
from adarank.training.processes import average_gradients_, broadcast_trainables_, init_distributed, upload
from adarank.training.processes import close_distributed as close_distributed  # public here too (0.2's home)
from adarank.training.processes import exit_distributed as exit_distributed

STRATEGIES = ("fsdp2", "ddp", "none")


@dataclass(frozen=True)
class LoopConfig:
    """What ``train_loop`` needs besides the model, the allocator and the data."""

    steps: int
    batch_size: int
    """Examples per process per micro-batch (the global batch is batch_size x world size x grad_accum_steps)."""
    learning_rate: float
    grad_accum_steps: int = 1
    singular_lr_multiplier: float = SINGULAR_LR_MULTIPLIER
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    orth_weight: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    strategy: str = "none"
    save_steps: int | None = None
    checkpoint_dir: str | None = None
    """Where checkpoint-N folders go (required with save_steps or resume)."""
    resume: bool = False
    """Continue from the latest complete checkpoint under checkpoint_dir."""
    log_steps: int = 1
    eval_steps: int | None = None
    """Call ``train_loop``'s ``evaluate`` every this many steps (on every process, in lockstep)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (``model.gradient_checkpointing_enable``)."""
    progress: bool = False
    """Show a progress bar on process 0 (log entries are printed above it)."""


@dataclass
class LoopResult:
    """What a finished loop returns: its log history (one entry per logging step, and one per
    evaluation), the mean training loss and the steps run. What the allocator did is the allocator's
    (``allocator.history``, ``allocator.trace``)."""

    log_history: list[dict[str, Any]] = field(default_factory=list)
    train_loss: float = float("nan")
    global_step: int = 0
    optimizer: Any = field(default=None, repr=False)
    """The AdamW the loop stepped."""


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


def _place(model: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    """Put ``model`` on ``device`` for ``strategy``: under fsdp2, the frozen base sharded (unless already)
    and the trainable parameters moved whole; otherwise the whole model moved. No wrapper."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy `{strategy}` is not one of {', '.join(STRATEGIES)}")
    if strategy != "fsdp2":
        return model.to(device)
    if not is_fully_sharded(model):  # adarank train shards while loading (sharding.shard_loaded_)
        shard_model(model)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad and param.device != device:
                param.data = param.data.to(device)
    return model


def _linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total`` (the Trainer's `linear`)."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
    steps; returns the model (sharded in place for fsdp2) and the result. ``on_step(step, allocator)``
    runs after each step's allocation on every process. Every ``config.eval_steps`` steps
    ``evaluate()`` runs on every process (the model in eval mode is the caller's to set) and its scores
    join the log as ``eval_<name>``; ``on_log(entry)`` sees every log entry (training and evaluation)
    on every process. Under torchrun the process group stays up for the caller's own collectives
    (exports); end with ``close_distributed()``.

    Raises:
        RuntimeError: the allocation did not finish (``check_finished``).
        FileNotFoundError: ``resume`` without a complete checkpoint of this engine.
    """
    rank, world, device = init_distributed()
    cfg = config
    if cfg.strategy == "fsdp2" and not dist.is_initialized():
        raise RuntimeError("the fsdp2 strategy runs under torchrun: `torchrun --nproc_per_node N ...`")
    inner = _place(unwrap(model), cfg.strategy, device)
    if cfg.gradient_checkpointing:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[operator]
    checkpoints = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    result = LoopResult()
    payload = None
    if cfg.resume:
        folder = latest_complete_checkpoint(checkpoints) if checkpoints else None
        if folder is None:
            raise FileNotFoundError(f"no complete checkpoint under `{checkpoints}` to resume from.")
        payload = load_checkpoint(folder, inner, allocator)
        result = LoopResult(payload["log_history"], payload["train_loss"], int(payload["global_step"]))
    elif world > 1 and cfg.strategy != "fsdp2":  # fsdp2: sent by process 0, or drawn alike everywhere, when loaded
        broadcast_trainables_(inner)
    allocator.begin(cfg.steps)
    optimizer = torch.optim.AdamW(param_groups(inner, cfg.learning_rate, cfg.weight_decay, cfg.singular_lr_multiplier))
    scheduler = _linear_schedule(optimizer, int(cfg.warmup_ratio * cfg.steps), cfg.steps)
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
    # the losses stay on the device until a logging step reads them (no host sync per step)
    # in float64, as the host's floats were: the same sums whatever the logging or resume points
    loss_sum = torch.tensor(0.0 if payload is None else result.train_loss * result.global_step, dtype=torch.float64,
                            device=device)  # fmt: skip
    saved = [] if payload is None else payload.get("window", [])
    window = [torch.tensor(v, dtype=torch.float64, device=device) for v in saved]  # global, since the last log
    pending: list[torch.Tensor] = []  # this process's step losses since the last reduction

    def reduce_pending() -> None:
        """The pending steps' global losses into the window and the sum: one all-reduce for all of them (at
        logging and checkpoint steps only), the same values and the same order of sums as one per step."""
        nonlocal loss_sum
        if not pending:
            return
        stacked = torch.stack(pending)
        if world > 1:
            dist.all_reduce(stacked)
        for value in (stacked.double() / world).unbind():
            window.append(value)
            loss_sum = loss_sum + value
        pending.clear()

    bar = _progress(cfg, rank, result.global_step)
    trainable = [p for p in inner.parameters() if p.requires_grad]  # rebuilt after a shrink replaces some
    inner.train()
    for step in range(result.global_step + 1, cfg.steps + 1):
        adapters = list(allocator.adapters.values())  # a shrink removes some
        step_loss = torch.zeros((), device=device)
        penalty = None
        for micro in range(cfg.grad_accum_steps):
            rows = batch_indices(len(dataset), cfg.seed, step, micro, rank, world, cfg.batch_size, cfg.grad_accum_steps)
            batch = _to_device(host_batch(inner, dataset, collate, rows), device)
            loss = inner(**batch).loss / cfg.grad_accum_steps
            if cfg.orth_weight and adapters:
                penalty = orthogonality_penalty(adapters, live_only=allocator.finalized)
                term = (cfg.orth_weight / cfg.grad_accum_steps) * penalty
                allocator.add_penalty_gradient_(term)  # importance.task_only: left out of the scores
                loss = loss + term.to(loss.dtype)
            step_loss += loss.detach()  # the logged loss: task loss + penalty, as the Trainer logged it
            loss.backward()
        average_gradients_(trainable, world)
        norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm) if trainable else torch.zeros(())
        if allocator.penalty_grads:  # importance.task_only on a scoring step (no host sync otherwise)
            allocator.scale_penalty_gradient_(clip_coefficient(norm, cfg.max_grad_norm))
        optimizer.step()
        scheduler.step()
        event = allocator.step(step, optimizer, inner)
        if event is not None and event["final"]:  # the shrink (if on) swapped parameters at this step
            trainable = [p for p in inner.parameters() if p.requires_grad]
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(step, allocator)
        pending.append(step_loss)  # reduced with the others at the next logging or checkpoint step
        saving = checkpoints is not None and cfg.save_steps and step % cfg.save_steps == 0
        if step % cfg.log_steps == 0 or step == cfg.steps or saving:
            reduce_pending()
        if step % cfg.log_steps == 0 or step == cfg.steps:
            losses = torch.stack(window).tolist()  # the logging step's host sync
            entry = {
                "loss": sum(losses) / len(losses),
                "grad_norm": float(norm),
                "learning_rate": scheduler.get_last_lr()[0],
                "rank_budget": budget_at(step, allocator.plan) if allocator.plan else 0,
                "forward_rank": sum(a.live_rank() for a in allocator.adapters.values()),
                "live_rank": allocator.trace[-1]["live_rank"],
                "step": step,
            }
            if penalty is not None:  # the step's own (last micro-batch's), before the optimizer moved P and Q
                entry["orth_penalty"] = float(penalty.detach())
            window = []
            _log(result, entry, rank, on_log, bar)
        if evaluate is not None and cfg.eval_steps and step % cfg.eval_steps == 0:
            scores = evaluate()
            inner.train()
            _log(result, {**{f"eval_{k}": v for k, v in scores.items()}, "step": step}, rank, on_log, bar)
        result.global_step = step
        if bar is not None:
            bar.update(1)
        if saving:
            assert checkpoints is not None
            result.train_loss = float(loss_sum) / step
            progress = {"log_history": result.log_history, "train_loss": result.train_loss, "global_step": step,
                        "window": [float(v) for v in window]}  # fmt: skip
            save_checkpoint(checkpoints / f"checkpoint-{step}", inner, optimizer, scheduler, allocator, progress)
    if bar is not None:
        bar.close()
    if result.global_step:
        result.train_loss = float(loss_sum) / result.global_step
    allocator.check_finished()
    result.optimizer = optimizer
    return inner, result


def host_batch(
    model: nn.Module, dataset: Any, collate: Callable[..., dict[str, torch.Tensor]], rows: list[int]
) -> dict[str, Any]:
    """A micro-batch as the host builds it, before anything moves to the device: the rows read and
    collated, and for a causal LM the positions its output head runs on (``only_scored_logits``, whose
    shapes depend on the data: found here, they cost the device no sync)."""
    return only_scored_logits(model, collate(_rows(dataset, rows)))


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of a host-built ``batch`` on ``device`` (``upload``)."""
    return {k: upload(v, device) for k, v in batch.items()}


def _rows(dataset: Any, indices: list[int]) -> list[dict[str, Any]]:
    """The rows at ``indices`` (one batched read where the dataset offers it, as datasets' Dataset does)."""
    getitems = getattr(dataset, "__getitems__", None)
    return list(getitems(indices)) if getitems is not None else [dataset[i] for i in indices]


def _progress(cfg: LoopConfig, rank: int, done: int) -> Any:
    """A tqdm bar over the optimizer steps on process 0 when ``cfg.progress``; None otherwise."""
    if not cfg.progress or rank != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=done, desc="training", unit="step", dynamic_ncols=True)


def _log(
    result: LoopResult,
    entry: dict[str, Any],
    rank: int,
    on_log: Callable[[dict[str, Any]], None] | None,
    bar: Any = None,
) -> None:
    """Append ``entry`` to the log history, print it on process 0 (above the progress bar) and hand it
    to ``on_log``."""
    result.log_history.append(entry)
    if rank == 0:
        line = json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in entry.items()})
        if bar is not None:
            bar.write(line)
        else:
            print(line, flush=True)
    if on_log is not None:
        on_log(entry)
