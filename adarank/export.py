"""Export pruned adapters and load them back: native, standard PEFT LoRA, merged weights.

- native: ``adapter.safetensors`` (each module's P, lambda, Q cut to its live rank; modules at rank 0
  left out; extra trained modules such as the head in full) + ``adarank_adapter.json`` (format
  version, base model, per-module ranks and scalings, target modules, extra modules, adarank
  version). ``load_adapter`` rebuilds the adapters at those ranks on a fresh base model.
- peft: a PEFT LoRA folder with per-module ranks (``rank_pattern``/``alpha_pattern`` keyed by the
  full, regex-escaped module name, so `attention.output.dense` and `output.dense` never collide):
  lora_A = Q, lora_B = s P diag(lambda) and lora_alpha = r (PEFT's scaling alpha / r is then 1).
- merged: the base model with W0 + s P diag(lambda m) Q folded in, saved with ``save_pretrained``.

Every export is written into a temporary folder next to ``out`` and renamed into place, so an
interrupted export leaves nothing half-written; an existing export is replaced only with
``overwrite``. Loading reads only safetensors and JSON (never pickle).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarank.inject import _set_module, find_adapters, inject_adapters
from adarank.layers import SVDLinear

FORMAT_VERSION = 1
NATIVE_TENSORS = "adapter.safetensors"
NATIVE_META = "adarank_adapter.json"


class ExportError(ValueError):
    """An export or an adapter load cannot be done; the message says why and how to fix it."""


def _version() -> str:
    from adarank import __version__

    return __version__


def live_parts(adapter: SVDLinear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P, lambda, Q) of the live triplets only: shapes (d_out, r), (r,), (r, d_in)."""
    keep = adapter.rank_mask.bool()
    return (
        adapter.left_vectors.detach()[:, keep].float().contiguous(),
        adapter.singular_values.detach()[keep].float().contiguous(),
        adapter.right_vectors.detach()[keep].float().contiguous(),
    )


def _trained_modules(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters outside the adapters (e.g. a new head), by full parameter name."""
    inside = {id(p) for a in find_adapters(model).values() for p in a.parameters()}
    return {
        n: p.detach().float().contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad and id(p) not in inside
    }


def _write_atomically(out: Path, overwrite: bool, fill: Callable[[Path], None]) -> Path:
    """Run ``fill`` on a fresh temporary folder beside ``out``, then move it to ``out``."""
    if out.exists() and not overwrite:
        raise ExportError(f"`{out}` already exists; choose another --out or pass --overwrite.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; an export is an ordinary folder
    try:
        fill(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_native(model: nn.Module, out: Path, base_model: Mapping[str, Any], overwrite: bool = False) -> Path:
    """Write the pruned adapter of ``model`` (see module docstring) to the folder ``out``; ``base_model``
    describes the base (e.g. name_or_path, gguf_file, format, num_labels) so the export can be rebuilt."""
    from safetensors.torch import save_file

    adapters = find_adapters(model)
    if not adapters:
        raise ExportError("the model has no adarank adapters to export; train or load_adapter first.")
    tensors: dict[str, torch.Tensor] = {}
    ranks, scalings, shapes = {}, {}, {}
    for name, adapter in adapters.items():
        ranks[name] = adapter.live_rank()
        scalings[name] = adapter.scaling
        shapes[name] = [adapter.out_features, adapter.in_features]
        if ranks[name]:
            left, values, right = live_parts(adapter)
            tensors |= {f"{name}.left_vectors": left, f"{name}.singular_values": values, f"{name}.right_vectors": right}
    trained = _trained_modules(model)
    tensors |= {f"trained.{n}": t for n, t in trained.items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "adarank_version": _version(),
        "base_model": dict(base_model),
        "ranks": ranks,
        "scaling": scalings,
        "shapes": shapes,
        "target_modules": sorted(ranks),
        "trained_parameters": sorted(trained),
    }

    def fill(folder: Path) -> None:
        save_file(tensors, str(folder / NATIVE_TENSORS), metadata={"format": "adarank", "version": str(FORMAT_VERSION)})
        (folder / NATIVE_META).write_text(json.dumps(meta, indent=2) + "\n")

    return _write_atomically(out, overwrite, fill)


def read_native(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and tensors of a native export, checked for completeness.

    Raises:
        ExportError: a missing, corrupt, truncated or newer-format file (never executes code).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_file, tensor_file = folder / NATIVE_META, folder / NATIVE_TENSORS
    if not meta_file.is_file() or not tensor_file.is_file():
        raise ExportError(f"`{folder}` is not an adarank adapter: it needs {NATIVE_META} and {NATIVE_TENSORS}.")
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ExportError(f"{meta_file} is not valid JSON ({err}); export the adapter again.") from None
    required = ("format_version", "ranks", "scaling", "shapes", "trained_parameters")
    if not isinstance(meta, dict) or any(k not in meta for k in required):
        raise ExportError(f"{meta_file} lacks {', '.join(required)}; export the adapter again.")
    if not all(isinstance(meta[k], dict) for k in ("ranks", "scaling", "shapes")) or not isinstance(
        meta["trained_parameters"], list
    ):
        raise ExportError(f"{meta_file}: ranks, scaling and shapes must be objects, trained_parameters a list.")
    if not isinstance(meta["format_version"], int) or meta["format_version"] > FORMAT_VERSION:
        raise ExportError(
            f"{meta_file} has format version {meta['format_version']!r}; this adarank ({_version()}) reads up to "
            f"{FORMAT_VERSION}: upgrade adarank."
        )
    try:
        tensors = load_file(str(tensor_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise ExportError(f"{tensor_file} is corrupt or truncated ({err}); export the adapter again.") from None
    for name, rank in meta["ranks"].items():
        if not isinstance(rank, int) or rank < 0:
            raise ExportError(f"{meta_file}: rank of `{name}` must be a whole number >= 0, got {rank!r}.")
        shape = meta["shapes"].get(name)
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(d, int) and d > 0 for d in shape)):
            raise ExportError(f"{meta_file}: shape of `{name}` must be [d_out, d_in], got {shape!r}.")
        if rank > min(shape) or not isinstance(meta["scaling"].get(name), (int, float)):
            raise ExportError(f"{meta_file}: `{name}` has rank {rank} > min{tuple(shape)} or no numeric scaling.")
        d_out, d_in = shape
        expected = {"left_vectors": (d_out, rank), "singular_values": (rank,), "right_vectors": (rank, d_in)}
        for part, shape in expected.items():
            tensor = tensors.get(f"{name}.{part}")
            if rank and (tensor is None or tuple(tensor.shape) != shape):
                raise ExportError(f"{tensor_file}: `{name}.{part}` should have shape {shape}; export again.")
    for tensor_name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ExportError(f"{tensor_file}: `{tensor_name}` holds NaN or inf; the adapter is unusable.")
    return meta, tensors


def load_adapter(model: nn.Module, folder: str | Path) -> dict[str, SVDLinear]:
    """Rebuild a native export's adapters, at their exported ranks, on ``model`` (a fresh base model,
    modified in place) and load the extra trained parameters. Modules exported at rank 0 stay plain.

    Raises:
        ExportError: the export is unreadable, or does not fit this model (names or shapes differ).
    """
    meta, tensors = read_native(Path(folder))
    if find_adapters(model):
        raise ExportError("the model already has adapters; use swap_adapter to replace them.")
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    problems = [f"`{n}` is not a module of this model" for n in meta["ranks"] if n not in modules]
    for name, (d_out, d_in) in meta["shapes"].items():
        weight = getattr(modules.get(name), "weight", None)
        if isinstance(weight, torch.Tensor) and sorted(weight.shape) != sorted((d_out, d_in)):
            problems.append(f"`{name}` is {tuple(weight.shape)} here but {d_out} x {d_in} in the adapter")
    for pname in meta["trained_parameters"]:
        tensor = tensors.get(f"trained.{pname}")
        if pname not in params or tensor is None or params[pname].shape != tensor.shape:
            problems.append(f"trained parameter `{pname}` does not match this model")
    if problems:
        raise ExportError(
            f"the adapter in `{folder}` was made for another base model ({meta.get('base_model')}): "
            + "; ".join(problems[:5])
        )
    live = [n for n, r in meta["ranks"].items() if r > 0]
    adapters: dict[str, SVDLinear] = {}
    if live:
        escaped = [f"re:{re.escape(n)}" for n in live]
        for name, adapter in inject_adapters(model, escaped, rank=1, alpha=1.0).items():
            device = adapter.left_vectors.device
            for part in ("left_vectors", "singular_values", "right_vectors"):
                setattr(adapter, part, nn.Parameter(tensors[f"{name}.{part}"].to(device)))
            adapter.rank_mask = torch.ones(meta["ranks"][name], device=device)
            adapter.scaling = float(meta["scaling"][name])
            adapters[name] = adapter
    with torch.no_grad():
        for pname in meta["trained_parameters"]:
            params[pname].copy_(tensors[f"trained.{pname}"])
    return adapters


def remove_adapters(model: nn.Module, keep_merged: bool = False) -> None:
    """Put every adapted module's base layer back in place (in place). A merged update is taken back
    out first, unless ``keep_merged``."""
    for name, adapter in find_adapters(model).items():
        if not keep_merged:
            adapter.unmerge()
        _set_module(model, name, adapter.base)


def swap_adapter(model: nn.Module, folder: str | Path) -> dict[str, SVDLinear]:
    """Replace the adapters on ``model`` with a native export's (checked before anything is removed).

    The extra trained parameters (e.g. the head) are overwritten with the new export's.
    """
    read_native(Path(folder))
    remove_adapters(model)
    return load_adapter(model, folder)


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every adapter folded into its base weight and the adapters removed."""
    plain = copy.deepcopy(model)
    for adapter in find_adapters(plain).values():
        adapter.merge()
    remove_adapters(plain, keep_merged=True)
    return plain


def export_merged(model: nn.Module, out: Path, tokenizer: Any = None, overwrite: bool = False) -> Path:
    """Save the merged model (no adapter code needed to run it) with ``save_pretrained``."""
    plain = merged_copy(model)
    for param in plain.parameters():
        param.requires_grad_(False)

    def fill(folder: Path) -> None:
        plain.save_pretrained(folder)  # type: ignore[operator]
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    return _write_atomically(out, overwrite, fill)


def export_peft(model: nn.Module, out: Path, base_model: str, overwrite: bool = False) -> Path:
    """Save a standard PEFT LoRA adapter with per-module ranks (see module docstring); ``base_model`` is
    recorded as its base_model_name_or_path.

    Raises:
        ExportError: peft is not installed, or no adapter has a live triplet.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ExportError("the peft format needs the peft package: pip install 'adarank[peft]'.") from None
    adapters = find_adapters(model)
    live = {n: a for n, a in adapters.items() if a.live_rank() > 0}
    if not live:
        raise ExportError("no adapter has a live triplet: there is no LoRA to export.")
    trained = _trained_modules(model)
    head_modules = sorted({n.rsplit(".", 1)[0] for n in trained})
    base = copy.deepcopy(model)
    remove_adapters(base)
    ranks = {n: a.live_rank() for n, a in live.items()}
    config = LoraConfig(
        r=max(ranks.values()),
        lora_alpha=max(ranks.values()),
        target_modules=sorted(live),
        rank_pattern={re.escape(n): r for n, r in ranks.items()},
        alpha_pattern={re.escape(n): r for n, r in ranks.items()},
        lora_dropout=0.0,
        bias="none",
        modules_to_save=head_modules or None,
        init_lora_weights=False,
    )
    peft_model = get_peft_model(base, config)
    peft_model.peft_config["default"].base_model_name_or_path = base_model  # get_peft_model resets it
    modules = dict(peft_model.get_base_model().named_modules())
    with torch.no_grad():
        for name, adapter in live.items():
            left, values, right = live_parts(adapter)
            layer = modules[name]
            layer.lora_A["default"].weight.copy_(right)
            layer.lora_B["default"].weight.copy_(left * (values * adapter.scaling))
            assert layer.scaling["default"] == 1.0, "alpha == r keeps PEFT's scaling at 1"
    _check_peft_ranks(peft_model, ranks)

    def fill(folder: Path) -> None:
        peft_model.save_pretrained(str(folder))

    return _write_atomically(out, overwrite, fill)


def _check_peft_ranks(peft_model: Any, ranks: Mapping[str, int]) -> None:
    modules = dict(peft_model.get_base_model().named_modules())
    wrong = [n for n, r in ranks.items() if modules[n].r["default"] != r]
    assert not wrong, f"PEFT gave other ranks to {wrong[:3]}"
