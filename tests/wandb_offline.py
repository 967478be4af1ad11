"""Read what a finished offline wandb run logged (wandb 0.31, the version pyproject pins).

The run file `offline-run-*/run-<id>.wandb` starts with a 7-byte header (`:W&B`, 0xBEE1, version)
and then uses LevelDB's log framing: 32 KiB blocks of records, each with a 7-byte header (crc32,
length, type FULL/FIRST/MIDDLE/LAST); a payload is a serialized `wandb_internal_pb2.Record`.
Read it only after the run finished (wandb.finish / teardown, or from another process).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    """Every Record in a `.wandb` file, in order."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            payloads = [chunk]
        elif kind == FIRST:
            pending, payloads = chunk, []
        elif kind == MIDDLE:
            pending, payloads = pending + chunk, []
        elif kind == LAST:
            payloads, pending = [pending + chunk], b""
        else:  # zero padding to the end of the block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        for payload in payloads:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            records.append(record)
    return records


def _items(items: Any) -> dict[str, Any]:
    """Items as a dict; a nested key [a, b] (how wandb stores media fields) becomes out[a][b]."""
    out: dict[str, Any] = {}
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
    return out


def run_file(run_dir: Path) -> Path:
    """The single offline run file under ``run_dir`` (searched recursively)."""
    files = sorted(run_dir.rglob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline wandb run under {run_dir}, found {files}"
    return files[0]


def history(path: Path) -> list[dict[str, Any]]:
    """The logged history rows (one dict per `wandb.log` call that wandb committed)."""
    return [_items(r.history.item) for r in read_records(path) if r.WhichOneof("record_type") == "history"]


def summary(path: Path) -> dict[str, Any]:
    """The run summary as last updated."""
    out: dict[str, Any] = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") == "summary":
            out.update(_items(record.summary.update))
    return out


def run_name(path: Path) -> str:
    """The run's display name, as the run was opened with it."""
    names = [r.run.display_name for r in read_records(path) if r.WhichOneof("record_type") == "run"]
    assert names, f"{path} has no run record"
    return names[-1]
