"""Resolve and load the base model: a local Hugging Face folder, an embedded one, or a GGUF file.

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
from adarank.data import default_model_path, smollm2_gguf


def cache_dir() -> Path:
    """Where dequantized GGUF models are cached (``$ADARANK_CACHE`` or ``~/.cache/adarank``)."""
    return Path(os.environ.get("ADARANK_CACHE") or Path.home() / ".cache" / "adarank")


def resolve_model(model: ModelConfig) -> tuple[Path, str]:
    """The model folder and GGUF file name (empty for a plain folder) that ``model`` names."""
    if model.name_or_path in ("", "minilm"):
        return default_model_path(), ""
    if model.name_or_path == "smollm2":
        gguf = smollm2_gguf()
        return gguf.parent, gguf.name
    return Path(model.name_or_path), model.gguf_file


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


def load_model(model: ModelConfig, generation: bool, num_labels: int) -> tuple[Any, nn.Module, list[str]]:
    """Tokenizer, fp32 model (causal LM for ``generation``, else a sequence classifier) and the names
    of the modules the checkpoint did not initialise (a new classification head).

    Raises:
        ConfigError: the folder does not hold a loadable model of that kind.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    path = hf_folder(model)
    auto = AutoModelForCausalLM if generation else AutoModelForSequenceClassification
    extra = {} if generation else {"num_labels": num_labels}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        loaded, info = auto.from_pretrained(  # type: ignore[misc]
            path, output_loading_info=True, dtype=torch.float32, **extra
        )
    except (OSError, ValueError, KeyError) as err:
        kind = "causal LM" if generation else "sequence classifier"
        raise ConfigError([f"model.name_or_path: cannot load `{path}` as a {kind} ({err})."]) from err
    if tokenizer.pad_token is None:  # Llama-style tokenizers have none
        tokenizer.pad_token = tokenizer.eos_token
    loaded.config.pad_token_id = tokenizer.pad_token_id
    new_modules = sorted({key.rsplit(".", 1)[0] for key in info["missing_keys"]})
    if generation:
        new_modules = [m for m in new_modules if m != "lm_head"]  # tied to the embeddings, not new
    return tokenizer, loaded, new_modules


def model_skeleton(model: ModelConfig, generation: bool, num_labels: int) -> nn.Module:
    """The model's modules on the meta device (shapes, no weights): enough to count adapters."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    folder, gguf_file = resolve_model(model)
    cached = _gguf_cache(folder, gguf_file) if gguf_file else folder
    try:
        if gguf_file and not (cached / "config.json").is_file():
            config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
        else:
            config = AutoConfig.from_pretrained(cached)
    except (OSError, ValueError) as err:
        raise ConfigError([f"model.name_or_path: cannot read the model config in `{folder}` ({err})."]) from err
    if not generation:
        config.num_labels = num_labels
    auto = AutoModelForCausalLM if generation else AutoModelForSequenceClassification
    with torch.device("meta"):
        return auto.from_config(config)
