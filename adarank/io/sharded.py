"""Load a model for FSDP2 so that no process holds a whole copy of its weights (issue 42).

Every process builds the model with its base weights on the meta device and fills its own shards straight
from the checkpoint's safetensors files (``adarank.core.sharding.shard_from_rows_``); where a checkpoint
cannot be read that way, process 0 loads it and sends the others their shards
(``adarank.core.sharding.shard_from_rank0_``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarank.config import ConfigError, ModelConfig
from adarank.io.models import (
    DTYPES,
    _auto_class,
    _checked_config,
    _special_tokens_from_config,
    _tokenizer,
    hf_folder,
    load_model,
    train_in_fp32,
)
from adarank.io.rows import KEY_ATTR, ROWS_ATTR, Entry, checkpoint_files, open_rows


def load_model_sharded(
    model: ModelConfig,
    generation: bool,
    num_labels: int,
    label_names: list[str] | None = None,
    by_rows: bool = True,
) -> tuple[Any, nn.Module, list[str]]:
    """``load_model`` for FSDP2 without a whole copy of the weights in any process. A collective: every
    process of the default group calls it.

    Process 0 reads the config and the tokenizer (and dequantizes a GGUF file to its cached safetensors
    folder once). When the folder is a safetensors checkpoint whose tensor names match the model
    (``by_rows``, the default), every process then builds the model with its base weights on the meta
    device, each tagged with its checkpoint key, and fills only its own shards from the files when the
    model is sharded (``adarank.core.sharding.shard_from_rows_``): no process holds more than its shards
    plus one tensor in flight. New modules (a new head) are drawn on every process exactly as
    ``from_pretrained`` draws them in one process (same seed, same order), and the non-persistent buffers
    (rotary frequencies) computed as it computes them. Otherwise (another format, names that need
    transformers' renaming, or ``by_rows=False``: the gradient warm start needs real weights before
    sharding) process 0 loads the checkpoint and the others receive their shards from it
    (``shard_from_rank0_``), and the reason is printed.

    Raises:
        ConfigError: as ``load_model``, on every process.
        RuntimeError: a checkpoint file missing, truncated or unreadable on any process (named, on every
            process; each process's problems are exchanged before any waits for another), or process 0
            failed otherwise.
    """
    import torch.distributed as dist

    shared: list[Any] = [None]
    tokenizer = None
    if dist.get_rank() == 0:
        try:
            tokenizer, shared[0] = _plan_sharded_load(model, generation, num_labels, label_names, by_rows)
        except ConfigError as err:
            shared[0] = {"problems": err.problems}
        except Exception as err:  # any other failure: the others must not wait for weights that never come
            shared[0] = {"failure": f"{type(err).__name__}: {err}"}
    dist.broadcast_object_list(shared, src=0)  # waits for process 0's config (and its GGUF cache, if any)
    plan = shared[0]
    if "problems" in plan:
        raise ConfigError(plan["problems"])
    if "failure" in plan:
        raise RuntimeError(f"process 0 failed to load the model: {plan['failure']}")
    if plan["keys"] is None:
        if dist.get_rank() == 0:
            print(f"adarank: fsdp2: process 0 loads the weights and sends the others their shards ({plan['why']})")
        return _load_on_rank0(model, generation, num_labels, label_names, plan["folder"])
    problem, built = "", None
    try:  # everything a process can fail at before the weights, inside the exchange: no process waits
        rows = open_rows(plan["folder"])
        missing = sorted(set(plan["keys"].values()) - set(rows.entries))
        if missing:
            problem = f"{plan['folder']}: {len(missing)} tensor(s) missing, e.g. `{missing[0]}`"
        else:
            tokenizer = tokenizer if dist.get_rank() == 0 else _tokenizer(plan["folder"])
            built = tokenizer, _skeleton_by_rows(model, generation, plan, rows)
            if generation:
                _special_tokens_from_config(built[0], built[1], plan["folder"])
    except Exception as err:  # noqa: BLE001 - sent to every process below
        problem = str(err) if isinstance(err, OSError) else f"{type(err).__name__}: {err}"
    problems: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)  # every process learns every process's problem
    found = [f"process {rank}: {text}" for rank, text in enumerate(problems) if text]
    if found or built is None:
        raise RuntimeError("cannot read the checkpoint by rows: " + "; ".join(found))
    if dist.get_rank() == 0:
        files = len(checkpoint_files(plan["folder"]) or [])
        print(f"adarank: fsdp2: every process reads only its own shards from `{plan['folder']}` ({files} file(s))")
    return built[0], built[1], plan["new_modules"]


def _plan_sharded_load(
    model: ModelConfig, generation: bool, num_labels: int, label_names: list[str] | None, by_rows: bool
) -> tuple[Any, dict[str, Any]]:
    """Process 0's part of ``load_model_sharded``: the tokenizer, and the plan sent to every process: the
    config, the new modules and, where the checkpoint can be read by rows, every weight's checkpoint key
    (``keys``: name -> key; None and ``why`` otherwise)."""
    from transformers import AutoConfig

    _checked_config(model, generation)
    path = hf_folder(model)
    tokenizer = _tokenizer(path)
    plan: dict[str, Any] = {"folder": path, "keys": None, "why": "", "new_modules": []}
    if not by_rows:
        plan["why"] = "the gradient warm start needs the whole model before sharding"
        return tokenizer, plan
    if not path.is_dir() or checkpoint_files(path) is None:  # a hub id resolves in transformers' cache
        plan["why"] = f"`{path}` holds no safetensors checkpoint to read by rows"
        return tokenizer, plan
    extra: dict[str, Any] = {} if generation else {"num_labels": num_labels}
    if label_names and not generation:
        extra["id2label"] = dict(enumerate(label_names))
        extra["label2id"] = {name: i for i, name in enumerate(label_names)}
    config = AutoConfig.from_pretrained(str(path), **extra)
    with torch.random.fork_rng(devices=[]):  # whatever building draws, the processes' generators stay equal
        skeleton = _empty_model(generation, config, model.dtype)
    _load_generation_config(skeleton, path)
    if generation:
        _special_tokens_from_config(tokenizer, skeleton, path)
    config.pad_token_id = tokenizer.pad_token_id
    if getattr(skeleton, "_keep_in_fp32_modules", None) and model.dtype != "float32":
        plan["why"] = "the model keeps some modules in float32, which only from_pretrained applies"
        return tokenizer, plan
    try:
        entries = open_rows(path).entries
    except OSError as err:
        plan["why"] = f"the checkpoint cannot be read by rows ({err})"
        return tokenizer, plan
    keys, new_modules, why = _checkpoint_keys(skeleton, entries, generation)
    plan.update(keys=keys, new_modules=new_modules, why=why, config=config,
                generation=getattr(skeleton, "generation_config", None))  # fmt: skip
    return tokenizer, plan


def _empty_model(generation: bool, config: Any, dtype: str) -> nn.Module:
    """The model of ``config`` with its parameters on the meta device and its buffers computed (rotary
    frequencies), weights tied as ``from_pretrained`` ties them (a tied LM head is the embeddings)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = _auto_class(generation).from_config(config, dtype=DTYPES[dtype])
    model.tie_weights()
    return model


def _load_generation_config(model: nn.Module, path: Path) -> None:
    """Give a causal LM built from its config the folder's generation config, as ``from_pretrained`` does."""
    if not (path / "generation_config.json").is_file() or not hasattr(model, "generation_config"):
        return
    from transformers import GenerationConfig

    setattr(model, "generation_config", GenerationConfig.from_pretrained(str(path)))  # noqa: B010 (not a tensor)


def _checkpoint_keys(
    skeleton: nn.Module, stored: Mapping[str, Entry], generation: bool
) -> tuple[dict[str, str] | None, list[str], str]:
    """Every weight of ``skeleton`` (and persistent buffer) -> its key among the checkpoint's ``stored``
    tensors: the same name, or the name without / with the model's base prefix (``bert.``: a BertModel
    checkpoint under a classifier), as ``from_pretrained`` maps them. A parameter outside the base model
    that the checkpoint lacks belongs to a new module (a new head). Returns (keys, new modules in the
    model's module order, ""), or (None, [], why) for what only ``from_pretrained`` handles: a base weight
    without a key (names it would rename), a stored tensor of another shape (a head with another number
    of labels) or of a dtype adarank cannot read by rows, an untied LM head the checkpoint lacks."""
    prefix = str(getattr(skeleton, "base_model_prefix", "") or "")
    persistent = {name for name, _ in skeleton.named_buffers()} - set(_non_persistent(skeleton))
    tensors: dict[str, torch.Tensor] = dict(skeleton.named_parameters())
    tensors.update((name, b) for name, b in skeleton.named_buffers() if name in persistent)
    keys: dict[str, str] = {}
    new: set[str] = set()
    for name, tensor in tensors.items():
        candidates = [name]
        if prefix and name.startswith(prefix + "."):
            candidates.append(name[len(prefix) + 1 :])
        elif prefix:
            candidates.append(f"{prefix}.{name}")
        key = next((c for c in candidates if c in stored), None)
        if key is not None:
            if stored[key].shape != tuple(tensor.shape):
                return None, [], f"`{key}` is {list(stored[key].shape)} in the checkpoint, {list(tensor.shape)} here"
            if stored[key].dtype is None:
                return None, [], f"`{key}` has a dtype adarank cannot read by rows ({stored[key].stored_dtype})"
            keys[name] = key
        elif name in persistent:
            continue  # a buffer the checkpoint does not carry keeps the value the model computed
        elif prefix and name.startswith(prefix + "."):
            return None, [], f"the checkpoint has no tensor for `{name}` under a name adarank can map"
        elif generation and name.startswith("lm_head."):
            return None, [], f"the checkpoint has no `{name}` (an LM head not tied to the embeddings)"
        else:
            new.add(name.rsplit(".", 1)[0])
    return keys, [name for name, _ in skeleton.named_modules() if name in new], ""


def _non_persistent(model: nn.Module) -> list[str]:
    """The full names of ``model``'s non-persistent buffers (computed by the model, never in a checkpoint)."""
    return [
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        for name in getattr(module, "_non_persistent_buffers_set", ())
    ]


def _skeleton_by_rows(model: ModelConfig, generation: bool, plan: dict[str, Any], rows: Any) -> nn.Module:
    """The model for ``shard_from_rows_``: base weights on the meta device, each tagged with its checkpoint
    key (``KEY_ATTR``), buffers computed, new modules drawn as ``from_pretrained`` draws them in one
    process (the global generator, in module order, by the model's own initialisation)."""
    skeleton = _empty_model(generation, plan["config"], model.dtype)
    if plan["generation"] is not None:  # generate() in lockstep needs the same stopping rules everywhere
        skeleton.generation_config = plan["generation"]
    new_modules = plan["new_modules"]
    modules = dict(skeleton.named_modules())
    for name in new_modules:
        modules[name].to_empty(device="cpu")
        for module in _post_order(modules[name]):  # from_pretrained's order: children first
            skeleton._init_weights(module)  # type: ignore[operator]
    tensors: dict[str, torch.Tensor] = dict(skeleton.named_parameters())
    tensors.update(skeleton.named_buffers())
    for name, key in plan["keys"].items():
        setattr(tensors[name], KEY_ATTR, key)
    setattr(skeleton, ROWS_ATTR, rows)
    train_in_fp32(skeleton, new_modules)
    return skeleton


def _load_on_rank0(
    model: ModelConfig, generation: bool, num_labels: int, label_names: list[str] | None, folder: Path
) -> tuple[Any, nn.Module, list[str]]:
    """The process-0 route of ``load_model_sharded``: process 0 loads the checkpoint, the others build the same
    model (process 0's config, dtype, generation config and new modules) on the meta device and receive their
    shards from it (``adarank.core.sharding.shard_from_rank0_``). A collective."""
    import torch.distributed as dist

    shared: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            tokenizer, loaded, new_modules = load_model(model, generation, num_labels, label_names)
        except ConfigError as err:
            shared[0] = {"problems": err.problems}
            dist.broadcast_object_list(shared, src=0)
            raise
        except Exception as err:  # the others must not wait for weights that never come
            shared[0] = {"failure": f"{type(err).__name__}: {err}"}
            dist.broadcast_object_list(shared, src=0)
            raise
        shared[0] = {"config": loaded.config, "generation": getattr(loaded, "generation_config", None),
                     "new_modules": new_modules}  # fmt: skip
        dist.broadcast_object_list(shared, src=0)
        return tokenizer, loaded, new_modules
    dist.broadcast_object_list(shared, src=0)  # waits for process 0's load
    if "problems" in shared[0]:
        raise ConfigError(shared[0]["problems"])
    if "failure" in shared[0]:
        raise RuntimeError(f"process 0 failed to load the model: {shared[0]['failure']}")
    tokenizer = _tokenizer(folder)
    with torch.device("meta"):
        skeleton = _auto_class(generation).from_config(shared[0]["config"], dtype=DTYPES[model.dtype])
    if shared[0]["generation"] is not None:  # generate() in lockstep needs the same stopping rules everywhere
        skeleton.generation_config = shared[0]["generation"]
    new_modules = shared[0]["new_modules"]
    if generation:  # the same end-of-sequence and padding as process 0's tokenizer
        _special_tokens_from_config(tokenizer, skeleton, folder)
    train_in_fp32(skeleton, new_modules)
    return tokenizer, skeleton, new_modules


def _post_order(module: nn.Module) -> list[nn.Module]:
    """``module`` and everything under it, each after its children (``initialize_weights``' order)."""
    return [*(m for child in module.children() for m in _post_order(child)), module]
