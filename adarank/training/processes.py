"""Processes of a torchrun job: the default process group's start and end, and the collectives the engine
runs on the trainable parameters (their gradients averaged in one all-reduce, process 0's values sent to
all). Also imported by ``adarank.training.engine``, whose public names these were."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process. Under torchrun (WORLD_SIZE and RANK in the
    environment) the default process group is initialised if needed (nccl on CUDA, gloo on CPU);
    otherwise this is the one process of a world of 1, with no process group."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return 0, 1, torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
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


def upload(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; to a GPU from pinned memory, without blocking the host."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def average_gradients_(params: Sequence[nn.Parameter], world: int) -> None:
    """Average the gradients of ``params`` over the processes in one all-reduce (flattened, with a count of
    the processes that produced each one). A parameter no process reached keeps no gradient, as in one
    process; one that some processes did not reach (a conditional module) averages with zeros there.
    Only a process that lacks some gradient reads the counts (a host sync); otherwise none is needed."""
    if world == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    seen = upload(torch.tensor([float(p.grad is not None) for p in params]), grads[0].device)
    flat = torch.cat([*(g.reshape(-1) for g in grads), seen])
    dist.all_reduce(flat)
    missing = any(p.grad is None for p in params)
    counts = flat[-len(params) :].tolist() if missing else [1.0] * len(params)
    offset = 0
    for param, grad, count in zip(params, grads, counts, strict=True):
        size = grad.numel()
        if count:
            averaged = (flat[offset : offset + size] / world).view_as(grad)
            if param.grad is None:
                param.grad = averaged.clone()
            else:
                param.grad.copy_(averaged)
        offset += size


@torch.no_grad()
def broadcast_trainables_(model: nn.Module) -> None:
    """Give every process process 0's trainable parameters and rank masks (a fresh DDP start: the warm
    start may differ by process on a GPU). A collective."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name, tensor in model.state_dict().items():
        if name.endswith("rank_mask") or name in trainable:
            dist.broadcast(tensor, src=0)
