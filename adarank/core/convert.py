"""`adarank convert`: a PEFT AdaLoRA adapter folder in, a plain PEFT LoRA folder with per-module ranks out.

PEFT's AdaLoRA layers refuse LoRA conversion, yet a served model wants a LoRA. PEFT's AdaLoRA computes,
per module, ``dW = B (A * E) * scaling / (ranknum + 1e-5)``, with ``scaling = lora_alpha`` (or the rank
when lora_alpha is 0) and ``ranknum`` as PEFT restores it on loading: the ``init_r`` the layer was built
with (``ranknum`` is not saved; PEFT refills it with init_r and keeps it through the resize to the saved
rank pattern). The LoRA written here holds, for every triplet whose E is not 0, ``lora_A = A`` and
``lora_B = B * E^T * scaling / (ranknum + 1e-5)``, at ``r = lora_alpha = its rank`` per module (scaling 1;
the global ``r`` and ``lora_alpha`` are equal too, so a server that ignores ``rank_pattern`` and
``alpha_pattern`` also scales by 1). Modules pruned to rank 0 are left out; the head and every other
``modules_to_save`` tensor is carried as saved. Only files are read: no base model is loaded.

With ``native``, also adarank's native export of the same adapter: P = B, lambda = E x scaling / (ranknum +
1e-5), Q = A at scaling 1, modules at rank 0 recorded as pruned, the ``modules_to_save`` tensors as
trained parameters, the base described from the config (``base_model_name_or_path``; SEQ_CLS a classifier
whose label count is the head's rows, named LABEL_i as transformers names them; otherwise generation).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from adarank.core.native import ExportError, _write_atomically, check_destination, write_native

WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_PREFIX = "base_model.model."


def _read_config(folder: Path, problems: list[str]) -> dict[str, Any] | None:
    file = folder / "adapter_config.json"
    if not folder.is_dir() or not file.is_file():
        problems.append(
            f"`{folder}` is not a PEFT adapter folder (no adapter_config.json); give the folder PEFT's "
            "save_pretrained wrote."
        )
        return None
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problems.append(f"`{file}` is not readable JSON ({err}).")
        return None
    if not isinstance(config, dict):
        problems.append(f"`{file}` is not a PEFT adapter config (not a mapping).")
        return None
    kind = config.get("peft_type")
    if kind != "ADALORA":
        problems.append(
            f"`{folder}` is a PEFT {kind or 'unknown-type'} adapter, not AdaLoRA: only AdaLoRA adapters are "
            "converted (a LoRA adapter is already one)."
        )
        return None
    if not config.get("rank_pattern"):
        problems.append(
            f"`{folder}`: the AdaLoRA config has no rank_pattern (PEFT writes it once update_and_allocate has "
            "allocated, at the latest when tfinal starts); save the adapter after training to its end."
        )
    return config


def _read_weights(folder: Path, problems: list[str]) -> dict[str, torch.Tensor] | None:
    for name in WEIGHTS:
        file = folder / name
        if not file.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(file))
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: said, not raised
            problems.append(f"`{file}` cannot be read ({type(err).__name__}: {err}).")
            return None
    problems.append(f"`{folder}` has no adapter weights ({' or '.join(WEIGHTS)}).")
    return None


def convert_adalora(
    source: str | Path, out: str | Path, overwrite: bool = False, native: str | Path | None = None
) -> dict[str, int]:
    """Write PEFT's AdaLoRA adapter in ``source`` as a PEFT LoRA adapter in ``out`` and, given ``native``, as
    adarank's native export there too (module docstring); returns every converted module's rank. Nothing is
    written when anything is wrong.

    Raises:
        ExportError: every problem found (not a PEFT folder, not AdaLoRA, no rank pattern, missing or
            unreadable weights, a weight missing for a module, an ``out`` that holds other files).
    """
    source, out = Path(source), Path(out)
    problems: list[str] = []
    config = _read_config(source, problems)
    weights = _read_weights(source, problems) if config is not None else None
    for destination in [out] + ([Path(native)] if native is not None else []):
        try:
            check_destination(destination, overwrite)
        except ExportError as err:
            problems.append(str(err))
    if problems or config is None or weights is None:
        raise ExportError("cannot convert: " + " ".join(problems))
    init_r, alpha = int(config["init_r"]), float(config["lora_alpha"])
    modules = sorted({k[: -len(".lora_E")] for k in weights if k.endswith(".lora_E")})
    missing = [f"{m}.{part}" for m in modules for part in ("lora_A", "lora_B") if f"{m}.{part}" not in weights]
    if missing or not modules:
        raise ExportError(
            "cannot convert: " + (f"weights missing for {missing[:3]}." if missing else "no AdaLoRA weights (lora_E).")
        )
    tensors: dict[str, torch.Tensor] = {}
    triplets: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # native: P, lambda, Q
    shapes: dict[str, list[int]] = {}
    for module in modules:
        e = weights[f"{module}.lora_E"].float().reshape(-1)
        a, b = weights[f"{module}.lora_A"].float(), weights[f"{module}.lora_B"].float()
        name = module.removeprefix(_PREFIX)
        shapes[name] = [int(b.shape[0]), int(a.shape[1])]
        keep = (e != 0).nonzero().squeeze(1)
        if keep.numel() == 0:
            continue  # pruned to rank 0: not adapted
        scaling = alpha if alpha > 0 else float(e.numel())  # as PEFT's update_layer at the saved rank
        factor = scaling / (torch.tensor(float(init_r)) + 1e-5)  # ranknum as PEFT restores it: init_r
        tensors[f"{module}.lora_A.weight"] = a[keep].contiguous()
        tensors[f"{module}.lora_B.weight"] = (b[:, keep] * (e[keep] * factor)).contiguous()
        triplets[name] = (b[:, keep].contiguous(), (e[keep] * factor).contiguous(), a[keep].contiguous())
    ranks = {name: int(t[1].numel()) for name, t in triplets.items()}
    if not ranks:
        raise ExportError("cannot convert: every module was pruned to rank 0; there is no LoRA to write.")
    adapted = {f"{m}.{part}" for m in modules for part in ("lora_A", "lora_B", "lora_E")}
    carried = {k: v for k, v in weights.items() if k not in adapted}  # the head, other modules_to_save
    _write(out, overwrite, _lora_config(config, ranks), tensors | carried)
    if native is not None:
        _write_native(Path(native), overwrite, config, triplets, shapes, carried)
    return ranks


def _lora_config(adalora: dict[str, Any], ranks: dict[str, int]) -> dict[str, Any]:
    """PEFT LoraConfig fields: per-module rank = alpha (scaling 1), the AdaLoRA config's other settings."""
    from peft import LoraConfig

    top = max(ranks.values())
    config = LoraConfig(
        r=top,
        lora_alpha=top,
        target_modules=sorted(ranks),
        rank_pattern={re.escape(n): r for n, r in ranks.items()},
        alpha_pattern={re.escape(n): r for n, r in ranks.items()},
        lora_dropout=float(adalora.get("lora_dropout") or 0.0),
        bias=adalora.get("bias") or "none",
        modules_to_save=adalora.get("modules_to_save"),
        fan_in_fan_out=bool(adalora.get("fan_in_fan_out")),
        task_type=adalora.get("task_type"),
        base_model_name_or_path=adalora.get("base_model_name_or_path"),
        init_lora_weights=False,
    )
    return config.to_dict()


def _write_native(
    out: Path,
    overwrite: bool,
    config: dict[str, Any],
    triplets: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    shapes: dict[str, list[int]],
    carried: dict[str, torch.Tensor],
) -> None:
    """adarank's native export (``adarank.core.native``) of the converted adapter, at scaling 1."""
    trained = {key.removeprefix(_PREFIX): t for key, t in carried.items()}
    classifier = config.get("task_type") == "SEQ_CLS"
    heads = [t for key, t in trained.items() if key.endswith(".weight") and t.dim() == 2]
    labels = int(heads[-1].shape[0]) if classifier and heads else 2
    base = {
        "name_or_path": str(config.get("base_model_name_or_path") or ""),
        "gguf_file": "",
        "format": "classification" if classifier else "generation",
        "num_labels": labels,
        "label_names": [f"LABEL_{i}" for i in range(labels)] if classifier else [],
    }
    write_native(out, overwrite, base, triplets, dict.fromkeys(shapes, 1.0), shapes, trained)


def _write(out: Path, overwrite: bool, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    def fill(folder: Path) -> None:
        serial = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
        (folder / "adapter_config.json").write_text(json.dumps(serial, indent=2, default=str) + "\n")
        save_file(tensors, str(folder / "adapter_model.safetensors"))

    _write_atomically(out, overwrite, "peft", str(config.get("base_model_name_or_path") or ""), fill)
