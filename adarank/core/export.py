"""Export pruned adapters and load them back: native (``adarank.core.native``, re-exported here),
standard PEFT LoRA, merged weights.

- native: ``adapter.safetensors`` (each module's P, lambda, Q cut to its live rank; modules at rank 0
  left out; the parameters trained in full, such as a new head) + ``adarank_adapter.json`` (format
  version, base model, per-module ranks and scalings, target modules, trained parameters, adarank
  version). ``load_adapter`` rebuilds the adapters at those ranks on a fresh base model.
- peft: a PEFT LoRA folder with per-module ranks (``rank_pattern``/``alpha_pattern`` keyed by the
  full, regex-escaped module name, so `attention.output.dense` and `output.dense` never collide):
  lora_A = Q, lora_B = s P diag(lambda) and lora_alpha = r (PEFT's scaling alpha / r is then 1);
  the trained head in ``modules_to_save``, ``task_type`` set, and a model card with the ranks.
- merged: the base model with W0 + s P diag(lambda m) Q folded in, saved with ``save_pretrained``.

What an export carries beside the adapters comes from the model's ``TrainedRecord`` (set where the
adapters were built or loaded), never from ``requires_grad`` flags. Every export is written into a
temporary folder next to ``out`` and renamed into place, so an interrupted export leaves nothing
half-written, and holds a marker file (``adarank_export.json``): ``overwrite`` replaces only a
folder with that marker, never anything else. Loading reads only safetensors and JSON (never pickle).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarank._version import __version__
from adarank.core.inject import (
    RECORD_ATTR,
    TrainedRecord,
    find_adapters,
    trained_record,
)
from adarank.core.native import (
    EXPORT_MARKER,
    FORMAT_VERSION,
    NATIVE_META,
    NATIVE_TENSORS,
    BaseModel,
    ExportError,
    _write_atomically,
    base_path_of,
    check_destination,
    describe_base,
    export_native,
    is_export,
    live_parts,
    load_adapter,
    read_native,
    remove_adapters,
    save_adapter,
    swap_adapter,
    trained_tensors,
)
from adarank.io.quantize import dequantized_copy


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every adapter folded into its base weight and the adapters removed. A
    quantized base (model.quantization) is dequantized first, to float32 (``dequantized_copy``): the merged
    weights are the dequantized base the adapters trained on, plus their update."""
    plain = dequantized_copy(model, torch.float32)
    for adapter in find_adapters(plain).values():
        adapter.merge()
    remove_adapters(plain, keep_merged=True)
    if hasattr(plain, RECORD_ATTR):
        delattr(plain, RECORD_ATTR)
    return plain


def export_merged(
    model: nn.Module, out: str | Path, tokenizer: Any = None, overwrite: bool = False, base_model: BaseModel = None
) -> Path:
    """Save the merged model (no adapter code needed to run it) with ``save_pretrained``, plus the
    tokenizer if given; ``base_model`` is recorded in the export marker (see ``export_native``)."""
    plain = merged_copy(model)
    for param in plain.parameters():
        param.requires_grad_(False)

    def fill(folder: Path) -> None:
        plain.save_pretrained(folder)  # type: ignore[operator]
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    return _write_atomically(out, overwrite, "merged", describe_base(model, base_model), fill)


def export_peft(model: nn.Module, out: str | Path, base_model: BaseModel = None, overwrite: bool = False) -> Path:
    """Save a standard PEFT LoRA adapter with per-module ranks (see module docstring).

    Args:
        model: a model with adarank adapters.
        out: the folder to create.
        base_model: the folder or hub id the base was loaded from, recorded as PEFT's
            ``base_model_name_or_path`` (default: the model's ``name_or_path``), or a description
            as for ``export_native``.
        overwrite: replace an earlier export at ``out``.

    Raises:
        ExportError: peft is not installed, or no adapter has a live triplet.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ExportError("the peft format needs the peft package: pip install 'adarank[peft]'.") from None
    from transformers.pytorch_utils import Conv1D

    check_destination(Path(out), overwrite)
    adapters = find_adapters(model)
    live = {n: a for n, a in adapters.items() if a.live_rank() > 0}
    if not live:
        raise ExportError(
            "no adapter has a live triplet, and a PEFT LoRA needs at least one module: use --format native "
            "(it carries the trained head alone) or --format merged."
        )
    record = trained_record(model)
    head_modules = sorted({n.rsplit(".", 1)[0] for n in record.trained_parameters})
    description = describe_base(model, base_model)
    base_path = base_path_of(model, base_model)
    base = dequantized_copy(model, torch.float32)  # the base only gives PEFT the structure: its weights are not saved
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
        fan_in_fan_out=any(isinstance(a.base, Conv1D) for a in live.values()),
        init_lora_weights=False,
        task_type="SEQ_CLS" if description.get("format") == "classification" else "CAUSAL_LM",
    )
    peft_model = get_peft_model(base, config)
    peft_model.peft_config["default"].base_model_name_or_path = base_path  # get_peft_model resets it
    modules = dict(peft_model.get_base_model().named_modules())
    with torch.no_grad():
        for name, adapter in live.items():
            left, values, right = live_parts(adapter)
            layer = modules[name]
            layer.lora_A["default"].weight.copy_(right)
            layer.lora_B["default"].weight.copy_(left * (values * adapter.scaling))
    wrong = [n for n, r in ranks.items() if modules[n].r["default"] != r or modules[n].scaling["default"] != 1.0]
    if wrong:
        raise ExportError(f"this peft version gave other ranks or scalings to {wrong[:3]}; use --format native.")

    def fill(folder: Path) -> None:
        peft_model.save_pretrained(str(folder))
        (folder / "README.md").write_text(_model_card(base_path, ranks, record, adapters, description))

    return _write_atomically(out, overwrite, "peft", base_path, fill)


def _model_card(
    base_path: str,
    ranks: Mapping[str, int],
    record: TrainedRecord,
    adapters: Mapping[str, Any],
    description: Mapping[str, Any],
) -> str:
    """A short README for a PEFT export: the base, how to load it, the labels and every module's rank."""
    names = [str(n) for n in description.get("label_names") or []]
    pruned = sorted({*record.pruned_modules, *(n for n, a in adapters.items() if a.live_rank() == 0)})
    rows = "\n".join(f"| `{n}` | {r} |" for n, r in ranks.items())
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {base_path}",
        "tags: [adarank, lora, adalora]",
        "---",
        "",
        "# LoRA adapter with per-module ranks (exported by adarank)",
        "",
        f"Trained with adaptive rank allocation (AdaLoRA) by adarank {__version__}, exported as a standard",
        "PEFT LoRA: `PeftModel.from_pretrained(base_model, this_folder)`.",
        "",
        f"- base model: `{base_path}`",
        f"- adapted modules: {len(ranks)}, total rank {sum(ranks.values())}; modules pruned to rank 0 "
        f"(not adapted): {len(pruned)}",
        f"- trained in full (`modules_to_save`): {', '.join(f'`{n}`' for n in record.trained_parameters) or 'none'}",
        *([f"- labels in id order (load with `num_labels={len(names)}`): {', '.join(names)}"] if names else []),
        "",
        "| module | rank |",
        "|---|---|",
        rows,
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "BaseModel",
    "EXPORT_MARKER",
    "ExportError",
    "FORMAT_VERSION",
    "NATIVE_META",
    "NATIVE_TENSORS",
    "check_destination",
    "describe_base",
    "export_merged",
    "export_native",
    "export_peft",
    "is_export",
    "live_parts",
    "load_adapter",
    "merged_copy",
    "read_native",
    "remove_adapters",
    "save_adapter",
    "swap_adapter",
    "trained_tensors",
]
