"""Resolve and load the base model: a local Hugging Face folder, a hub id, an embedded one, or a GGUF file.

A GGUF file is dequantized to fp32 once and cached as an ordinary Hugging Face folder under
``$ADARANK_CACHE`` (default ``~/.cache/adarank``), so later runs load it in under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarank.config import ConfigError, ModelConfig
from adarank.io.assets import default_model_path, smollm2_gguf
from adarank.io.hub import is_hub_id, offline_reason, unreachable_problem

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """Where dequantized GGUF models are cached (``$ADARANK_CACHE`` or ``~/.cache/adarank``)."""
    return Path(os.environ.get("ADARANK_CACHE") or Path.home() / ".cache" / "adarank")


def resolve_model(model: ModelConfig) -> tuple[Path, str]:
    """The model folder (or hub id) and GGUF file name (empty for a plain folder) that ``model`` names."""
    if model.name_or_path in ("", "minilm"):
        return default_model_path(), ""
    if model.name_or_path == "smollm2":
        gguf = smollm2_gguf()
        return gguf.parent, gguf.name
    return Path(model.name_or_path).expanduser(), model.gguf_file


def _hub_options(source: Path | str) -> dict[str, Any]:
    """``from_pretrained`` options for ``source``: for a hub id out of reach, read the cache only (or
    fail at once with how to pre-download it) instead of retrying the network for ~25 s.

    Raises:
        ConfigError: a hub id that is not cached while the hub cannot be reached.
    """
    name = str(source)
    if not is_hub_id(name):
        return {}
    problem = unreachable_problem("model.name_or_path", name, "model")
    if problem:
        raise ConfigError([problem])
    return {"local_files_only": True} if offline_reason() else {}


ENCODER_ONLY = (
    "bert",
    "roberta",
    "distilbert",
    "deberta",
    "deberta-v2",
    "electra",
    "albert",
    "xlm-roberta",
    "camembert",
    "mpnet",
    "modernbert",
    "xlm",
    "flaubert",
    "ernie",
    "nomic_bert",
    "t5",
    "mt5",
    "bart",
)


def causal_problem(config: Any, source: Path | str) -> str | None:
    """Why the model of ``config`` cannot serve as a causal LM (an encoder, or an encoder-decoder), if so."""
    model_type = str(getattr(config, "model_type", ""))
    if model_type in ENCODER_ONLY or getattr(config, "is_encoder_decoder", False):
        return (
            f"model.name_or_path `{source}` is a `{model_type}` model, not a decoder: data.format generation and "
            "language_modeling need a causal LM (e.g. model.name_or_path=smollm2); use data.format=classification."
        )
    return None


def read_config(model: ModelConfig) -> Any:
    """The model's transformers config (from the folder, the hub cache or the GGUF header), without weights.

    Raises:
        ConfigError: it cannot be read.
    """
    from transformers import AutoConfig

    folder, gguf_file = resolve_model(model)
    cached = _gguf_cache(folder, gguf_file) if gguf_file else folder
    options = {} if gguf_file else _hub_options(cached)  # fails at once for a hub id out of reach
    try:
        if gguf_file and not (cached / "config.json").is_file():
            return AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
        return AutoConfig.from_pretrained(str(cached), **options)
    except (OSError, ValueError) as err:
        raise ConfigError([f"model.name_or_path: cannot read the model config of `{folder}` ({err})."]) from err


def _checked_config(model: ModelConfig, causal: bool) -> Any:
    """``read_config``, refusing an encoder where a causal LM is needed (before any weights load).

    Raises:
        ConfigError: the config cannot be read, or ``causal`` and the model is not a decoder.
    """
    config = read_config(model)
    if causal and (problem := causal_problem(config, model.name_or_path)):
        raise ConfigError([problem])
    return config


def _gguf_cache(folder: Path, gguf_file: str) -> Path:
    file = (folder / gguf_file).resolve()
    stat = file.stat()
    key = hashlib.sha256(f"v2|{file}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{file.stem}-{key}"


def hf_folder(model: ModelConfig) -> Path:
    """A Hugging Face folder holding the model: the folder itself, or the cached fp32 copy of a GGUF
    file (made on first use: dequantizing SmolLM2-135M takes ~25 s, reloading the copy ~0.5 s).

    Raises:
        ConfigError: the model cannot be found or converted (says what to install or fix).
    """
    folder, gguf_file = resolve_model(model)
    if not gguf_file:
        return folder
    cached = _gguf_cache(folder, gguf_file)
    if (cached / "config.json").is_file():
        return cached
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(["loading a GGUF model needs the `gguf` package: pip install gguf (or 'adarank[gguf]')."])
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"adarank: dequantizing {folder / gguf_file} to fp32 once; cached in {cached}")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    except (OSError, ValueError) as err:
        raise ConfigError([f"model.gguf_file: cannot load `{folder / gguf_file}` ({err})."]) from err
    # save_pretrained refuses a GGUF-loaded model; an identical model built from its config saves fine
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)  # the copy is plain fp32; the Trainer refuses "quantized" models
    config = AutoConfig.for_model(**settings)
    rebuilt = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    rebuilt.load_state_dict(loaded.state_dict())
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".partial-"))
    try:
        rebuilt.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(cached)  # atomic: a half-written copy is never picked up
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (cached / "config.json").is_file():  # another process may have won the race
            raise
    return cached


def _auto_class(generation: bool) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if generation else AutoModelForSequenceClassification


def _tokenizer(path: Path) -> Any:
    """The model folder's tokenizer, with end-of-sequence as padding where it has none (Llama-style)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), **_hub_options(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _config_token_id(model: nn.Module, name: str) -> int | None:
    """The model's ``name`` (eos_token_id, pad_token_id) from its config or generation config; the first
    of a list."""
    for config in (model.config, getattr(model, "generation_config", None)):
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return None


def _special_tokens_from_config(tokenizer: Any, model: nn.Module, path: Path) -> None:
    """A causal LM's tokenizer needs end-of-sequence (answers and documents end with it) and padding. One
    the tokenizer lacks falls back to the id the model's config names (padding then to end-of-sequence).

    Raises:
        ConfigError: neither the tokenizer nor the config names one (before anything is written).
    """
    problems = []
    for token, name in (("eos_token", "eos_token_id"), ("pad_token", "pad_token_id")):
        if getattr(tokenizer, name) is not None:
            continue
        found = _config_token_id(model, name)
        if found is None and token == "pad_token":
            found = tokenizer.eos_token_id
        text = tokenizer.convert_ids_to_tokens(found) if found is not None and found < len(tokenizer) else None
        if text is None:
            problems.append(
                f"model.name_or_path `{path}`: the tokenizer has no {token} and the model config names no valid "
                f"{name}; a causal LM needs one (answers and documents end with end-of-sequence, batches are padded). "
                f"Set it and save the tokenizer: `tok.{token} = '...'; tok.save_pretrained('{path}')`."
            )
            continue
        setattr(tokenizer, token, text)
    if problems:
        raise ConfigError(problems)


def load_model(
    model: ModelConfig, generation: bool, num_labels: int, label_names: list[str] | None = None
) -> tuple[Any, nn.Module, list[str]]:
    """Tokenizer, model (causal LM for ``generation``, else a sequence classifier with ``label_names``
    as its id2label) with base weights in ``model.dtype``, and the names of the modules the checkpoint
    did not initialise (a new classification head; kept in float32, see ``train_in_fp32``).

    Raises:
        ConfigError: the folder does not hold a loadable model of that kind, or a hub id is out of reach.
    """
    _checked_config(model, generation)
    path = hf_folder(model)
    auto = _auto_class(generation)
    extra: dict[str, Any] = {} if generation else {"num_labels": num_labels}
    if label_names and not generation:
        extra["id2label"] = dict(enumerate(label_names))
        extra["label2id"] = {name: i for i, name in enumerate(label_names)}
    hub = _hub_options(path)
    try:
        tokenizer = _tokenizer(path)
        loaded, info = auto.from_pretrained(
            str(path), output_loading_info=True, dtype=DTYPES[model.dtype], **extra, **hub
        )
    except (OSError, ValueError, KeyError) as err:
        kind = "causal LM" if generation else "sequence classifier"
        raise ConfigError([f"model.name_or_path: cannot load `{path}` as a {kind} ({err})."]) from err
    if generation:
        _special_tokens_from_config(tokenizer, loaded, path)
    loaded.config.pad_token_id = tokenizer.pad_token_id
    new_modules = sorted({key.rsplit(".", 1)[0] for key in info["missing_keys"]})
    if generation:
        new_modules = [m for m in new_modules if m != "lm_head"]  # tied to the embeddings, not new
    train_in_fp32(loaded, new_modules)
    return tokenizer, loaded, new_modules


def _cast_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    dtype = next(module.parameters()).dtype
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def train_in_fp32(model: nn.Module, names: list[str]) -> None:
    """Keep the modules ``names`` (trained in full) in float32 under a lower-precision base: their
    weights are cast up and their floating inputs cast to float32, so AdamW's small updates are not
    lost to bfloat16 rounding. A float32 model is left as it is."""
    modules = dict(model.named_modules())
    for name in names:
        module = modules.get(name)
        if module is None or all(p.dtype == torch.float32 for p in module.parameters()):
            continue
        module.float()
        module.register_forward_pre_hook(_cast_inputs)


def model_skeleton(model: ModelConfig, generation: bool, num_labels: int) -> nn.Module:
    """The model's modules on the meta device (shapes, no weights): enough to count adapters.

    Raises:
        ConfigError: the config cannot be read, or a causal format meets an encoder model.
    """
    config = _checked_config(model, generation)
    if not generation:
        config.num_labels = num_labels
    with torch.device("meta"):
        return _auto_class(generation).from_config(config)
