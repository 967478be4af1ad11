"""The native export and its loader: ``adapter.safetensors`` (each module's P, lambda, Q cut to its live
rank; modules at rank 0 left out; the parameters trained in full, such as a new head) and
``adarank_adapter.json`` (format version, base model, per-module ranks and scalings, target modules,
trained parameters, adarank version). ``load_adapter`` rebuilds the adapters at those ranks on a fresh
base model with the same constructor as a fresh run (``build_adapters``). Also the safe writing every
export shares: a temporary folder renamed into place, with a marker file (``adarank_export.json``), so
``overwrite`` replaces only an export, never anything else. Loading reads only safetensors and JSON."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarank._version import __version__
from adarank.core.inject import (
    RECORD_ATTR,
    TrainedRecord,
    _set_module,
    build_adapters,
    find_adapters,
    trained_record,
)
from adarank.core.layers import SVDLinear

FORMAT_VERSION = 1


NATIVE_TENSORS = "adapter.safetensors"


NATIVE_META = "adarank_adapter.json"


EXPORT_MARKER = "adarank_export.json"


BaseModel = Mapping[str, Any] | str | Path | None


class ExportError(ValueError):
    """An export or an adapter load cannot be done; the message says why and how to fix it."""


def _version() -> str:
    return __version__


def live_parts(adapter: SVDLinear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P, lambda, Q) of the live triplets only: shapes (d_out, r), (r,), (r, d_in)."""
    keep = adapter.rank_mask.bool()
    return (
        adapter.left_vectors.detach()[:, keep].float().contiguous(),
        adapter.singular_values.detach()[keep].float().contiguous(),
        adapter.right_vectors.detach()[keep].float().contiguous(),
    )


def _trained_tensors(model: nn.Module, record: TrainedRecord) -> dict[str, torch.Tensor]:
    """The recorded trained parameters' values, by full parameter name."""
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [n for n in record.trained_parameters if n not in params]
    if missing:
        raise ExportError(f"trained parameter `{missing[0]}` is not in this model; export the model it was trained on.")
    return {n: params[n].detach().float().contiguous() for n in record.trained_parameters}


def describe_base(model: nn.Module, base_model: BaseModel = None) -> dict[str, Any]:
    """What an export records about its base model, enough to rebuild it (``adarank.training.setup.load_base``):
    ``base_model`` itself when it is such a mapping, else built from ``base_model`` (a folder or hub id;
    default: the path the model was loaded from) and the model's kind and label count."""
    if isinstance(base_model, Mapping):
        return dict(base_model)
    generation = bool(getattr(model, "can_generate", lambda: False)())
    config = getattr(model, "config", None)
    id2label = dict(getattr(config, "id2label", None) or {})
    return {
        "name_or_path": str(base_model) if base_model is not None else str(getattr(model, "name_or_path", "") or ""),
        "gguf_file": "",
        "format": "generation" if generation else "classification",
        "num_labels": int(getattr(config, "num_labels", 2)),
        "label_names": [] if generation else [str(id2label[i]) for i in sorted(id2label, key=int)],
    }


def base_path_of(model: nn.Module, base_model: BaseModel) -> str:
    """The folder or hub id the base was loaded from, as PEFT records it (base_model_name_or_path)."""
    if base_model is not None and not isinstance(base_model, Mapping):
        return str(base_model)
    loaded_from = str(getattr(model, "name_or_path", "") or "")
    return loaded_from or str(describe_base(model, base_model).get("name_or_path", ""))


def is_export(folder: Path) -> bool:
    """Whether ``folder`` holds an adarank export (its marker, or a native export made before markers)."""
    return (folder / EXPORT_MARKER).is_file() or (folder / NATIVE_META).is_file()


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse to write an export to ``out`` unless it is new, an empty folder, or (with ``overwrite``)
    an earlier export. Nothing of the user's is ever replaced.

    Raises:
        ExportError: ``out`` is a file, a non-empty folder that is not an export, or an export without
            ``overwrite``.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"`{out}` is a file, not a folder; choose another --out.")
    if not any(out.iterdir()):
        return
    if not is_export(out):
        raise ExportError(
            f"`{out}` is a non-empty folder that is not an adarank export (no {EXPORT_MARKER}); --overwrite "
            "replaces only an earlier export, never other files: choose another --out."
        )
    if not overwrite:
        raise ExportError(f"`{out}` already exists; choose another --out or pass --overwrite.")


def _write_atomically(out: str | Path, overwrite: bool, fmt: str, base: Any, fill: Callable[[Path], None]) -> Path:
    """Run ``fill`` on a fresh temporary folder beside ``out``, add the export marker, then move it to
    ``out`` (replacing an earlier export only; see ``check_destination``)."""
    out = Path(out)
    check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; an export is an ordinary folder
    try:
        fill(tmp)
        marker = {"format": fmt, "adarank_version": _version(), "base_model": base}
        (tmp / EXPORT_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
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


def export_native(model: nn.Module, out: str | Path, base_model: BaseModel = None, overwrite: bool = False) -> Path:
    """Write the pruned adapter of ``model`` (see module docstring) to the folder ``out``.

    Args:
        model: a model with adarank adapters (fresh from training, or loaded).
        out: the folder to create.
        base_model: a description of the base (name_or_path, gguf_file, format, num_labels), or the
            folder / hub id it was loaded from (default: the model's ``name_or_path``).
        overwrite: replace an earlier export at ``out``.

    Raises:
        ExportError: the model has no adapters, or ``out`` cannot be written (see ``check_destination``).
    """
    adapters = find_adapters(model)
    if not adapters and not hasattr(model, RECORD_ATTR):  # loaded with every module at rank 0 is fine
        raise ExportError("the model has no adarank adapters to export; train or load_adapter first.")
    record = trained_record(model)
    triplets: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    scalings, shapes = {}, {}
    for name, (d_out, d_in, scaling) in record.pruned_modules.items():
        scalings[name], shapes[name] = scaling, [d_out, d_in]
    for name, adapter in adapters.items():
        scalings[name], shapes[name] = adapter.scaling, [adapter.out_features, adapter.in_features]
        if adapter.live_rank():
            triplets[name] = live_parts(adapter)
    trained = _trained_tensors(model, record)
    return write_native(out, overwrite, describe_base(model, base_model), triplets, scalings, shapes, trained)


def write_native(
    out: str | Path,
    overwrite: bool,
    base: dict[str, Any],
    triplets: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    scalings: Mapping[str, float],
    shapes: Mapping[str, list[int]],
    trained: Mapping[str, torch.Tensor],
) -> Path:
    """Write a native export (see module docstring) atomically: per adapted module (``shapes``: [d_out, d_in])
    its scaling and live (P, lambda, Q) in ``triplets`` (none at rank 0: its rank is the count of its lambdas);
    the tensors trained in full under their module-path names; ``base`` as ``describe_base`` describes it.

    Raises:
        ExportError: ``out`` cannot be written (see ``check_destination``).
    """
    from safetensors.torch import save_file

    parts = ("left_vectors", "singular_values", "right_vectors")  # P, lambda, Q
    tensors = {f"{name}.{part}": t for name, three in triplets.items() for part, t in zip(parts, three, strict=True)}
    tensors |= {f"trained.{n}": t.contiguous() for n, t in trained.items()}
    ranks = {name: int(triplets[name][1].numel()) if name in triplets else 0 for name in shapes}
    meta = {
        "format_version": FORMAT_VERSION,
        "adarank_version": _version(),
        "base_model": base,
        "ranks": ranks,
        "scaling": dict(scalings),
        "shapes": dict(shapes),
        "target_modules": sorted(ranks),
        "trained_parameters": sorted(trained),
    }

    def fill(folder: Path) -> None:
        save_file(tensors, str(folder / NATIVE_TENSORS), metadata={"format": "adarank", "version": str(FORMAT_VERSION)})
        (folder / NATIVE_META).write_text(json.dumps(meta, indent=2) + "\n")

    return _write_atomically(out, overwrite, "native", base, fill)


def save_adapter(model: nn.Module, folder: str | Path, base_model: BaseModel = None, overwrite: bool = True) -> Path:
    """Save the adapters and the parameters trained in full (the native export) after training, as
    PEFT's ``save_pretrained`` does; ``load_adapter`` reads it back. Replaces an earlier export at
    ``folder`` (never a folder of other files). See ``export_native`` for the arguments."""
    return export_native(model, folder, base_model, overwrite)


def trained_tensors(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The parameters a run trained besides its adapters (a new head, ``adapter.modules_to_save``), by
    their names in the model, from a native export's ``read_native`` output."""
    return {name: tensors[f"trained.{name}"] for name in meta["trained_parameters"]}


def read_native(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and tensors of a native export, checked for completeness.

    Raises:
        ExportError: a missing, corrupt, truncated or newer-format file (never executes code).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_file, tensor_file = folder / NATIVE_META, folder / NATIVE_TENSORS
    if not folder.exists():
        raise ExportError(f"`{folder}` does not exist; give a run directory or an adapter folder.")
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


def _fit_problems(model: nn.Module, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Why a native export does not fit ``model`` (names, shapes, trained parameters); adapted
    modules are judged by the base layer they wrap, so a model with adapters can be checked too."""
    modules = {n: (m.base if isinstance(m, SVDLinear) else m) for n, m in model.named_modules()}
    inside = {id(p) for a in find_adapters(model).values() for p in a.parameters()}
    params = {n: p for n, p in model.named_parameters(remove_duplicate=False) if id(p) not in inside}
    problems = [f"`{n}` is not a module of this model" for n in meta["ranks"] if n not in modules]
    for name, (d_out, d_in) in meta["shapes"].items():
        weight = getattr(modules.get(name), "weight", None)
        if isinstance(weight, torch.Tensor) and sorted(weight.shape) != sorted((d_out, d_in)):
            problems.append(f"`{name}` is {tuple(weight.shape)} here but {d_out} x {d_in} in the adapter")
    for pname in meta["trained_parameters"]:
        tensor = tensors.get(f"trained.{pname}")
        if pname not in params or tensor is None or params[pname].shape != tensor.shape:
            problems.append(f"trained parameter `{pname}` does not match this model")
    return problems


def _install(model: nn.Module, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, SVDLinear]:
    """Build the export's adapters with ``build_adapters`` (shapes and ranks), then load every tensor
    with ``load_state_dict``: the same path a fresh adapter takes."""
    ranks: dict[str, int] = meta["ranks"]
    live = {n: r for n, r in ranks.items() if r > 0}
    pruned = {n: (*meta["shapes"][n], float(meta["scaling"][n])) for n, r in ranks.items() if r == 0}
    adapters = build_adapters(
        model,
        live,
        alpha=1.0,
        dropout=0.0,
        trained_parameters=meta["trained_parameters"],
        scalings={n: float(meta["scaling"][n]) for n in live},
        pruned_modules=pruned,
    )
    values = trained_tensors(meta, tensors)
    for name, adapter in adapters.items():
        for part in ("left_vectors", "singular_values", "right_vectors"):
            values[f"{name}.{part}"] = tensors[f"{name}.{part}"]
        values[f"{name}.rank_mask"] = torch.ones(adapter.rank)
    result = model.load_state_dict(values, strict=False)
    assert not result.unexpected_keys, f"checked by _fit_problems: {result.unexpected_keys[:3]}"
    return adapters


def load_adapter(model: nn.Module, folder: str | Path) -> dict[str, SVDLinear]:
    """Rebuild a native export's adapters, at their exported ranks, on ``model`` (a fresh base model,
    modified in place) and load the parameters it trained in full. Modules exported at rank 0 stay
    plain. Afterwards the model is as ``inject_adapters`` leaves one: adapters and trained parameters
    trainable, the rest frozen, the record of trained parameters set.

    Raises:
        ExportError: the export is unreadable, or does not fit this model (names or shapes differ).
    """
    meta, tensors = read_native(Path(folder))
    if find_adapters(model):
        raise ExportError("the model already has adapters; use swap_adapter to replace them.")
    problems = _fit_problems(model, meta, tensors)
    if problems:
        raise ExportError(
            f"the adapter in `{folder}` was made for another base model ({meta.get('base_model')}): "
            + "; ".join(problems[:5])
        )
    return _install(model, meta, tensors)


def remove_adapters(model: nn.Module, keep_merged: bool = False) -> None:
    """Put every adapted module's base layer back in place (in place). A merged update is taken back
    out first, unless ``keep_merged``."""
    for name, adapter in find_adapters(model).items():
        if not keep_merged:
            adapter.unmerge()
        _set_module(model, name, adapter.base)


def swap_adapter(model: nn.Module, folder: str | Path) -> dict[str, SVDLinear]:
    """Replace the adapters on ``model`` with a native export's, atomically: the export is read and
    checked against the model (names, shapes, trained parameters) before anything is removed, and on
    any error the model is left as it was. The trained parameters (e.g. the head) take the new
    export's values.

    Raises:
        ExportError: the export is unreadable or does not fit; or the current adapter trained a
            parameter the new export lacks (its values would silently stay).
    """
    meta, tensors = read_native(Path(folder))
    problems = _fit_problems(model, meta, tensors)
    current = trained_record(model)
    lacking = sorted(set(current.trained_parameters) - set(meta["trained_parameters"]))
    if lacking:
        problems.append(
            f"the current adapter trained `{lacking[0]}`, which the new export does not carry; load the new "
            "export on a fresh base model instead"
        )
    if problems:
        raise ExportError(f"cannot swap in `{folder}`: " + "; ".join(problems[:5]) + ". The model is unchanged.")
    old_adapters = find_adapters(model)
    old_trained = {n: t.clone() for n, t in _trained_tensors(model, current).items()}
    old_flags = {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)}
    try:
        remove_adapters(model)
        return _install(model, meta, tensors)
    except Exception:
        remove_adapters(model)
        for name, adapter in old_adapters.items():
            _set_module(model, name, adapter)
        params = dict(model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for name, value in old_trained.items():
                params[name].copy_(value)
        for name, flag in old_flags.items():
            params[name].requires_grad_(flag)
        setattr(model, RECORD_ATTR, current)
        raise
