"""Read a safetensors checkpoint by rows, without mapping the file: what lets every FSDP2 process fill its
own shards straight from the checkpoint (``adarank.core.sharding.shard_from_rows_``) so no process ever
holds a whole copy of the model.

A safetensors file is an 8-byte little-endian header length, a JSON header (per tensor: dtype, shape and
the byte range of its row-major data) and the data. Rows ``start:stop`` of a tensor (dim 0) are one
contiguous byte range, read with one ``readinto`` into a buffer of exactly that size: nothing else of the
file enters the process (file pages sit in the kernel's page cache, not in the process's memory, unlike
a memory map whose touched pages count as the process's resident memory). A sharded checkpoint
(``model.safetensors.index.json``) is read through its weight map.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
ROWS_ATTR = "adarank_rows"
"""The attribute of a model loaded for reading by rows that holds its ``CheckpointRows`` (set by
``adarank.io.sharded.load_model_sharded``, removed once the shards are filled)."""
KEY_ATTR = "adarank_key"
"""The attribute of a meta-device weight that names its tensor in the checkpoint."""
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


@dataclass(frozen=True)
class Entry:
    """Where one tensor lies: its file, dtype, shape and the byte offset of its data in the file."""

    file: Path
    dtype: torch.dtype | None
    """None for a dtype adarank cannot read (``stored_dtype`` names it): refused when the model needs it."""
    shape: tuple[int, ...]
    offset: int
    stored_dtype: str = ""

    @property
    def row_bytes(self) -> int:
        """Bytes of one row (dim 0) of the tensor; the whole tensor's bytes for a scalar."""
        count = 1
        for size in self.shape[1:]:
            count *= size
        if self.dtype is None:
            raise OSError(f"{self.file}: dtype {self.stored_dtype} cannot be read by rows")
        return count * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class CheckpointRows:
    """The tensors of a safetensors checkpoint folder (one file or an index of shards), read by rows.

    ``reads`` records every read as (key, start row, stop row): what a test checks to show a process read
    only its own rows.
    """

    folder: Path
    entries: dict[str, Entry]
    reads: list[tuple[str, int, int]] = field(default_factory=list)

    def read_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (dim 0) of tensor ``key``, in its stored dtype; a scalar whole."""
        entry = self.entries[key]
        rows = entry.shape[0] if entry.shape else 1
        if entry.dtype is None or not 0 <= start <= stop <= rows:
            raise OSError(f"{entry.file}: cannot read rows {start}:{stop} of `{key}` ({list(entry.shape)}, "
                          f"{entry.stored_dtype})")  # fmt: skip
        self.reads.append((key, start, stop))
        shape = (stop - start, *entry.shape[1:]) if entry.shape else ()
        out = torch.empty(shape, dtype=entry.dtype)
        if out.numel() == 0:
            return out
        with open(entry.file, "rb") as handle:
            handle.seek(entry.offset + start * entry.row_bytes)
            view = out.view(-1).view(torch.uint8)
            got = handle.readinto(memoryview(view.numpy()))  # type: ignore[arg-type]
        if got != view.numel():
            raise OSError(f"{entry.file}: {key} ended after {got} of {view.numel()} bytes (a truncated file?)")
        return out


def _header(file: Path) -> tuple[dict[str, dict], int]:
    """The JSON header of a safetensors file and where its data begins.

    Raises:
        OSError: the file is missing, unreadable, not safetensors, or shorter than its header says.
    """
    with open(file, "rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            raise OSError(f"{file}: not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", head)
        raw = handle.read(length)
    if len(raw) != length:
        raise OSError(f"{file}: truncated inside its header ({len(raw)} of {length} bytes)")
    try:
        header = json.loads(raw)
    except ValueError as err:
        raise OSError(f"{file}: not a safetensors file (its header is not JSON: {err})") from err
    header.pop("__metadata__", None)
    start = 8 + length
    try:
        end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise OSError(f"{file}: its header's data offsets are malformed ({err!r})") from err
    size = file.stat().st_size
    if size < start + end:
        raise OSError(f"{file}: truncated: {size:,} bytes where its header needs {start + end:,}")
    return header, start


def checkpoint_files(folder: Path) -> list[Path] | None:
    """The safetensors files of a checkpoint folder (the index's shards, or the single file); None when
    the folder holds neither (another format: then it cannot be read by rows).

    Raises:
        OSError: the index cannot be read.
    """
    index = folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map") or {}
            return sorted({folder / str(name) for name in weight_map.values()})
        except (ValueError, AttributeError) as err:
            raise OSError(f"{index}: not a safetensors index ({err})") from err
    single = folder / SINGLE
    return [single] if single.is_file() else None


def open_rows(folder: Path) -> CheckpointRows:
    """The checkpoint in ``folder`` as ``CheckpointRows`` (headers read, no tensor data).

    Raises:
        OSError: no safetensors checkpoint there, or a shard file is missing, truncated or not safetensors
            (the message names the file).
    """
    files = checkpoint_files(folder)
    if files is None:
        raise OSError(f"{folder}: no {SINGLE} or {INDEX}")
    entries: dict[str, Entry] = {}
    for file in files:
        if not file.is_file():
            raise OSError(f"{file}: missing (named by {folder / INDEX})")
        header, start = _header(file)
        for key, info in header.items():
            try:
                shape = tuple(int(size) for size in info["shape"])
                entries[key] = Entry(file, SAFETENSORS_DTYPES.get(info["dtype"]), shape,
                                     start + int(info["data_offsets"][0]), str(info["dtype"]))  # fmt: skip
            except (KeyError, TypeError, ValueError, IndexError) as err:
                raise OSError(f"{file}: the header's entry for `{key}` is malformed ({err!r})") from err
    return CheckpointRows(folder, entries)
