"""FSDP2 (``torch.distributed.fsdp.fully_shard``) support: shard a model per block, and the local views
and collectives the allocator needs when its adapters' parameters are sharded DTensors.

FSDP2 shards every parameter on dim 0 into ``world_size`` chunks (``torch.chunk`` sizes: ceil(n / W)
rows each, the last ones shorter or empty). For an SVD adapter that means P (d_out x r) is split by
rows, so each process holds every triplet's part of P, while lambda (r) and Q (r x d_in) are split by
triplet, so whole triplets live on different processes. Everything here is a no-op on plain tensors,
so the same allocator code serves one process, DDP and FSDP2.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from adarank.io.rows import KEY_ATTR, ROWS_ATTR, CheckpointRows

try:
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # pragma: no cover - torch without distributed support
    DTensor = None  # type: ignore[assignment,misc]
    Shard = None  # type: ignore[assignment,misc]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper; ``model`` itself otherwise (FSDP2 shards in place, no wrapper)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (an FSDP2-sharded parameter, gradient or state)."""
    return DTensor is not None and isinstance(tensor, DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor (a view sharing its storage); a plain tensor itself."""
    return tensor.to_local() if is_sharded(tensor) else tensor  # type: ignore[attr-defined]


def local_rows(tensor: torch.Tensor) -> slice:
    """The global rows (dim 0) this process holds of a dim-0-sharded DTensor; all rows of a plain one.

    Raises:
        ValueError: the DTensor is not sharded on dim 0 of a one-dimensional mesh (FSDP2's layout).
    """
    rows = int(tensor.shape[0])
    if not is_sharded(tensor):
        return slice(0, rows)
    placements = tensor.placements  # type: ignore[attr-defined]
    mesh = tensor.device_mesh  # type: ignore[attr-defined]
    if len(placements) != 1 or placements[0] != Shard(0):
        raise ValueError(f"expected FSDP2's Shard(0) placement on a 1-D mesh, got {placements}")
    world, rank = mesh.size(), mesh.get_local_rank()
    chunk = -(-rows // world)
    start = min(rank * chunk, rows)
    stop = min(start + chunk, rows)
    held = int(local(tensor).shape[0])
    if held != stop - start:
        raise ValueError(f"local shard has {held} rows, expected {stop - start} (rows {start}:{stop} of {rows})")
    return slice(start, stop)


def any_sharded(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether any of ``tensors`` is sharded (then every process must join the collectives below)."""
    return any(is_sharded(t) for t in tensors)


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` (a plain tensor) over all processes in place; returns it. Every process must call it."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every process (an all-gather for a DTensor, differentiable); a plain one itself."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor  # type: ignore[attr-defined]


class _GatherRows(torch.autograd.Function):
    """The whole tensors of several dim-0 shards (FSDP2's layout) in one all-gather: each process sends its
    shards, each padded to ceil(rows / W) rows, in one flat buffer. Backward, like DTensor's
    ``full_tensor``: every process computed the same function of the whole tensors, so each takes the rows
    of the gradient it owns, without communication."""

    @staticmethod
    def forward(ctx, group, sizes: list[int], *shards: torch.Tensor) -> tuple[torch.Tensor, ...]:
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        chunks = [-(-rows // world) for rows in sizes]
        padded = []
        for shard, chunk in zip(shards, chunks, strict=True):
            block = shard.new_zeros((chunk, *shard.shape[1:]))
            block[: shard.shape[0]] = shard
            padded.append(block.reshape(-1))
        send = torch.cat(padded)
        received = send.new_empty(world * send.numel())
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
        gather(received, send, group=group)
        per_process = received.view(world, -1)
        wholes, offset = [], 0
        for shard, rows, chunk in zip(shards, sizes, chunks, strict=True):
            width = chunk * _row_numel(shard)
            stacked = per_process[:, offset : offset + width].reshape(world * chunk, *shard.shape[1:])
            wholes.append(stacked[:rows].clone())
            offset += width
        ctx.spans = [
            (min(rank * chunk, rows), min(rank * chunk + chunk, rows))
            for rows, chunk in zip(sizes, chunks, strict=True)
        ]
        return tuple(wholes)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        owned = [None if g is None else g[start:stop] for g, (start, stop) in zip(grads, ctx.spans, strict=True)]
        return (None, None, *owned)


def _row_numel(tensor: torch.Tensor) -> int:
    count = 1
    for size in tensor.shape[1:]:
        count *= int(size)
    return count


def full_all(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``full`` of each of ``tensors`` with one all-gather for all the DTensors among them in FSDP2's layout
    (Shard(0) on a 1-D mesh; per process group and dtype) instead of one each; differentiable, with the same
    values and gradients as ``full`` one by one (used by the orthogonality penalty on FSDP2-sharded adapters:
    1 collective per call instead of 2 per adapter). DTensors in another layout are gathered one by one
    (``full``); plain tensors are returned as they are. A collective when any is sharded."""
    out = list(tensors)
    groups: dict[tuple[Any, torch.dtype], list[int]] = {}
    for index, tensor in enumerate(tensors):
        if not is_sharded(tensor):
            continue
        placements = tensor.placements  # type: ignore[attr-defined]
        if len(placements) != 1 or placements[0] != Shard(0):  # another layout (HSDP's 2-D mesh): one by one
            out[index] = full(tensor)
        else:
            group = tensor.device_mesh.get_group()  # type: ignore[attr-defined]  # one per fully_shard, same group
            groups.setdefault((group, tensor.dtype), []).append(index)
    for (group, _), indices in groups.items():
        sizes = [int(tensors[i].shape[0]) for i in indices]
        wholes = _GatherRows.apply(group, sizes, *(local(tensors[i]) for i in indices))
        for index, whole in zip(indices, wholes, strict=True):
            out[index] = whole
    return out


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformer: the elements of its longest ``nn.ModuleList`` whose entries
    all have one class (BERT's ``encoder.layer``, Llama's ``model.layers``, GPT-2's ``transformer.h``)."""
    best: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best):
            kinds = {type(block) for block in module}
            if len(kinds) == 1:
                best = list(module)
    return best


def shard_model(model: nn.Module) -> int:
    """Apply FSDP2 in place: ``fully_shard`` every transformer block, then the root (embeddings, norms,
    head and anything outside the blocks). Only frozen parameters are sharded: the trainable ones
    (adapters, a new head) are left whole on every process (``ignored_params``), so the allocator, the
    shrink and the checkpoints see plain tensors; adarank's engine averages their gradients itself.
    Returns the number of blocks sharded.

    Raises:
        ValueError: the model has no repeated blocks to shard.
    """
    from torch.distributed.fsdp import fully_shard

    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no repeated transformer blocks (an nn.ModuleList) to shard")
    trainable = {p for p in model.parameters() if p.requires_grad}
    for block in blocks:
        fully_shard(block, ignored_params=trainable)
    fully_shard(model, ignored_params=trainable)
    return len(blocks)


def is_fully_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` has been applied to ``model`` (its root)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@torch.no_grad()
def shard_from_rank0_(model: nn.Module, device: torch.device) -> int:
    """Shard ``model`` (``shard_model``) where process 0 holds its weights and every other process the
    same modules on the meta device (``adarank.io.sharded.load_model_sharded``), so that no process but 0
    ever holds a whole copy: the others allocate their own shards on ``device`` and receive them from
    process 0 one tensor at a time (each parameter whole, then sliced to the local rows; each buffer
    whole, non-persistent ones such as rotary frequencies included). Peak memory: process 0 the model
    plus its shards, the others their shards plus the largest tensor. A collective. Returns the number
    of blocks sharded."""
    rank = dist.get_rank()
    whole = {name: param.detach() for name, param in model.named_parameters()} if rank == 0 else {}
    blocks = shard_model(model)
    if rank != 0:
        model.to_empty(device=device)
    for name, param in model.named_parameters():  # the same names in the same order on every process
        source = whole.pop(name).to(device) if rank == 0 else torch.empty(param.shape, dtype=param.dtype, device=device)
        dist.broadcast(source, src=0)
        local(param).copy_(source[local_rows(param)])
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
    return blocks


@torch.no_grad()
def shard_from_rows_(model: nn.Module, device: torch.device) -> int:
    """Shard ``model`` (``shard_model``) where no process holds its base weights: every process built it
    with them on the meta device, each tagged with its checkpoint key (``adarank_key``), and the checkpoint
    readable by rows (``model.adarank_rows``, an ``adarank.io.rows.CheckpointRows``; both set by
    ``adarank.io.sharded.load_model_sharded``). Each process allocates its shards on ``device`` and reads
    into them only its own rows of each weight, one tensor at a time, cast to the parameter's dtype;
    tensors already holding values (new modules, adapters, computed buffers) keep them, and a buffer the
    checkpoint carries is read whole. No collective beyond ``fully_shard``'s. Peak memory: the shards
    plus one tensor's rows in flight. Returns the number of blocks sharded.

    Raises:
        RuntimeError: a tensor is on the meta device and has no checkpoint key.
    """
    rows: CheckpointRows = getattr(model, ROWS_ATTR)
    keys = {name: getattr(t, KEY_ATTR, None) for name, t in [*model.named_parameters(), *model.named_buffers()]}
    kept = {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]
            if not t.is_meta and keys[name] is None}  # fmt: skip
    unfilled = [name for name, key in keys.items() if key is None and name not in kept]
    if unfilled:
        raise RuntimeError(f"{len(unfilled)} tensor(s) have neither a value nor a checkpoint key, e.g. `{unfilled[0]}`")
    blocks = shard_model(model)
    ties = _tied_parameters(model)
    model.to_empty(device=device)  # gives every module its own new parameter: tie them again
    for module, attr, owner, owner_attr in ties:
        module._parameters[attr] = owner._parameters[owner_attr]
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        key = keys[name]
        if key is None:  # a value of its own (a frozen new module is sharded like the base: its rows)
            value = kept.pop(name)
            local(tensor).copy_(value[local_rows(tensor)] if tensor.dim() else value)
            continue
        span = local_rows(tensor) if tensor.dim() else slice(0, 0)
        part = rows.read_rows(key, span.start, span.stop) if tensor.dim() else rows.read_rows(key, 0, 1)
        local(tensor).copy_(part.to(tensor.dtype).view(local(tensor).shape))
    delattr(model, ROWS_ATTR)
    return blocks


def _tied_parameters(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module, str]]:
    """(module, name, owner, owner's name) for every parameter registered again under another module (a tied
    LM head), the owner being where ``named_parameters`` first meets it."""
    first: dict[int, tuple[nn.Module, str]] = {}
    ties = []
    for module in model.modules():
        for attr, param in module._parameters.items():
            if param is None:
                continue
            if id(param) in first:
                ties.append((module, attr, *first[id(param)]))
            else:
                first[id(param)] = (module, attr)
    return ties


def shard_loaded_(model: nn.Module, device: torch.device) -> int:
    """Shard a model from ``adarank.io.sharded.load_model_sharded`` the way it was loaded: by rows from the
    checkpoint (``shard_from_rows_``) or from process 0 (``shard_from_rank0_``). A collective."""
    if hasattr(model, ROWS_ATTR):
        return shard_from_rows_(model, device)
    return shard_from_rank0_(model, device)


@contextmanager
def gathered_trainables(model: nn.Module) -> Iterator[None]:
    """Within the block, every trainable DTensor parameter of ``model`` (adapters, a new head) is replaced
    by its whole tensor on every process, so code written for plain modules (exports, counts) reads
    them; the sharded parameters are put back on exit. Frozen base weights stay sharded. A collective:
    every process must enter it. Do not run the model's forward inside it."""
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is not None and param.requires_grad and is_sharded(param):
                    swapped.append((module, name, param))
                    module._parameters[name] = nn.Parameter(full(param.detach()), requires_grad=True)
        yield
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param
