"""Setting a run up: the model loaded with its adapters and allocator (``prepare``), or described from its
shapes alone (``describe``), the format's collator, the chat template, and what an export records of its
base model (``base_description`` / ``load_base``). Shared by ``adarank train`` and the analysis commands."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarank.config import ConfigError, ModelConfig, RunConfig
from adarank.core.allocator import RankAllocator
from adarank.core.inject import count_trainable, find_adapters, inject_adapters, module_shapes
from adarank.core.layers import SVDLinear
from adarank.core.schedule import constant_rank_budget
from adarank.core.shrink import cut_to_masks_, first_triplets
from adarank.data import LABEL_NAMES
from adarank.data.tasks import GenerationCollator
from adarank.io.models import hf_folder, load_model, model_skeleton, train_in_fp32
from adarank.io.quantize import quantize_base_
from adarank.io.rundir import read_ranks
from adarank.io.sharded import load_model_sharded
from adarank.reporting.plan import adapter_plan, plan_summary
from adarank.training.engine import LoopConfig


def is_causal(cfg: RunConfig) -> bool:
    """Whether the run trains a causal LM (generation or language_modeling) rather than a classifier."""
    return cfg.data.format != "classification"


def _config_label_names(cfg: RunConfig) -> list[str]:
    """The label names the config implies without reading the data: data.label_names, else an
    embedded task's; empty when only the data can tell."""
    return list(cfg.data.label_names or LABEL_NAMES.get(cfg.data.dataset, []))


def _label_count(cfg: RunConfig) -> int:
    """Classes of the head as far as the config tells (2 when only the data can tell)."""
    return len(_config_label_names(cfg)) or 2


def targets_or_raise(model: nn.Module, cfg: RunConfig) -> dict[str, tuple[int, int]]:
    """The (out, in) shapes of the modules adapter.target_modules names in ``model``.

    Raises:
        ConfigError: a target matches nothing, or something that is not a linear layer.
    """
    try:
        return module_shapes(model, cfg.adapter.target_modules)
    except ValueError as err:
        raise ConfigError([f"adapter.target_modules: {err}"]) from err


def describe(cfg: RunConfig) -> tuple[str, Any]:
    """The plan summary and BudgetPlan of ``cfg`` from the model's shapes alone (no weights loaded).

    Raises:
        ConfigError: the model, target modules or budget are invalid.
    """
    skeleton = model_skeleton(cfg.model, is_causal(cfg), _label_count(cfg))
    shapes = targets_or_raise(skeleton, cfg)
    base_params = sum(p.numel() for p in skeleton.parameters())
    return plan_summary(cfg, shapes, base_params), adapter_plan(cfg, shapes, base_params)


def prepare(cfg: RunConfig, label_names: list[str] | None = None) -> tuple[Any, nn.Module, RankAllocator]:
    """Load the model (a classifier over ``label_names`` or a causal LM), inject adapters and build the
    allocator; every problem raised before training. Under ``distributed.strategy=fsdp2`` (the process
    group initialised) a collective: every process builds the model on the meta device and reads its own
    shards from the checkpoint when it is sharded (``load_model_sharded``; process 0 loads it whole for the
    gradient warm start or a checkpoint that cannot be read by rows).

    Raises:
        ConfigError: the model folder, target modules, head or budget are invalid.
    """
    torch.manual_seed(cfg.seed)
    names = label_names or _config_label_names(cfg)
    if cfg.distributed.strategy == "fsdp2":  # the gradient warm start needs the whole model on process 0
        by_rows = cfg.adapter.init != "gradient" or bool(cfg.resume)
        loaded = load_model_sharded(cfg.model, is_causal(cfg), len(names) or 2, names or None, by_rows=by_rows)
    else:
        loaded = load_model(cfg.model, is_causal(cfg), len(names) or 2, names or None)
    tokenizer, model, new_modules = loaded
    base_params = sum(p.numel() for p in model.parameters())  # before quantization: logical sizes, as plan's
    shapes = targets_or_raise(model, cfg)
    try:
        quantize_base_(model, cfg.model.quantization, keep=tuple([*new_modules, *cfg.adapter.modules_to_save]))
    except ValueError as err:
        raise ConfigError([str(err) + "."]) from err
    budget = cfg.budget
    if cfg.adapter.ranks_from is not None:  # fixed found ranks: no allocation, init_rank only sets the scaling
        budget = replace(budget, schedule="constant", target_rank=budget.init_rank, target_params=None)
    budget = constant_rank_budget(budget, [o + i + 1 for o, i in shapes.values()], base_params)
    narrow = [n for n, (o, i) in shapes.items() if budget.init_rank > min(o, i)]
    if cfg.adapter.init == "gradient" and narrow:
        raise ConfigError([
            f"adapter.init=gradient: budget.init_rank ({budget.init_rank}) exceeds min(d_out, d_in) of {len(narrow)} "
            f"target module(s) (e.g. {narrow[0]}: {min(shapes[narrow[0]])}), and a gradient has no more directions; "
            "lower budget.init_rank or use adapter.init=orthonormal."
        ])  # fmt: skip
    try:
        adapters = inject_adapters(
            model,
            cfg.adapter.target_modules,
            rank=budget.init_rank,
            alpha=cfg.adapter.alpha,
            dropout=cfg.adapter.dropout,
            modules_to_save=[*new_modules, *cfg.adapter.modules_to_save],
            seed=cfg.seed,
        )
    except ValueError as err:
        raise ConfigError([f"adapter.modules_to_save: {err}"]) from err
    if not adapters and not count_trainable(model):
        raise ConfigError([
            "nothing to train: adapter.target_modules is empty and this model's classification head came with the "
            "checkpoint, so it is not new; name it in adapter.modules_to_save (e.g. [classifier]) to train it alone."
        ])  # fmt: skip
    if cfg.adapter.ranks_from is not None:
        adapters = _cut_to_found_ranks(model, adapters, cfg.adapter.ranks_from, budget.init_rank)
    train_in_fp32(model, list(cfg.adapter.modules_to_save))
    allocator = RankAllocator(
        adapters, budget, cfg.importance, total_steps=cfg.train.max_steps, base_params=base_params
    )
    return tokenizer, model, allocator


def _cut_to_found_ranks(
    model: nn.Module, adapters: dict[str, SVDLinear], ranks_from: str, init_rank: int
) -> dict[str, SVDLinear]:
    """adapter.ranks_from: cut every fresh adapter to the first triplets of its found rank (rank 0: the
    module is left plain); returns the adapters left.

    Raises:
        ConfigError: the file's modules are not the targeted ones, a rank exceeds init_rank, or every rank is 0.
    """
    ranks, problems = read_ranks(ranks_from)
    if problems:
        raise ConfigError(problems)
    where = f"adapter.ranks_from `{ranks_from}`"
    missing = [n for n in adapters if n not in ranks]
    extra = [n for n in ranks if n not in adapters]
    if missing:
        problems.append(
            f"{where} has no rank for {len(missing)} targeted module(s) (e.g. {missing[0]}); target the modules "
            "of the run that found the ranks (its adapter.target_modules)."
        )
    if extra:
        problems.append(
            f"{where} ranks {len(extra)} module(s) this run does not target (e.g. {extra[0]}); target the modules "
            "of the run that found the ranks (its adapter.target_modules)."
        )
    high = [f"{n}: {r}" for n, r in ranks.items() if n in adapters and r > init_rank]
    if high:
        problems.append(
            f"{where}: rank(s) above budget.init_rank ({init_rank}): {', '.join(high[:3])}; use the init_rank of "
            "the run that found them."
        )
    if not problems and not any(ranks.values()):
        problems.append(f"{where}: every rank is 0, so nothing would be adapted; give a run that kept some.")
    if problems:
        raise ConfigError(problems)
    cut_to_masks_(model, adapters, first_triplets(adapters, ranks))
    return find_adapters(model)


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def check_chat_template(tokenizer: Any, cfg: RunConfig) -> None:
    """Chat data needs a chat template: data.chat_template (installed on the tokenizer) or the tokenizer's.

    Raises:
        ConfigError: neither exists.
    """
    if not cfg.data.messages_field:
        return
    if cfg.data.chat_template:
        tokenizer.chat_template = cfg.data.chat_template
    elif not getattr(tokenizer, "chat_template", None):
        raise ConfigError([
            f"the tokenizer of `{cfg.model.name_or_path}` has no chat template, so data.messages_field cannot be "
            f"rendered; give one as data.chat_template (a Jinja template), e.g. ChatML: {json.dumps(CHATML)}"
        ])  # fmt: skip


def collator(cfg: RunConfig, tokenizer: Any) -> Any:
    """The batch collator of the run's format: right-padded generation rows, or a classifier's padding."""
    from transformers import DataCollatorWithPadding

    return GenerationCollator(tokenizer.pad_token_id) if is_causal(cfg) else DataCollatorWithPadding(tokenizer)


def base_description(cfg: RunConfig, label_names: list[str] | None = None) -> dict[str, Any]:
    """What an export records about its base model, enough to rebuild it (see ``load_base``): the
    model, its dtype, the format and the label names in id order (none for a causal LM)."""
    if label_names is None:
        label_names = _config_label_names(cfg)
    if is_causal(cfg):
        label_names = []
    return {
        "name_or_path": cfg.model.name_or_path or "minilm",
        "gguf_file": cfg.model.gguf_file,
        "dtype": cfg.model.dtype,
        "quantization": cfg.model.quantization,
        "format": cfg.data.format,
        "num_labels": len(label_names),
        "label_names": list(label_names),
    }


def load_base(description: dict[str, Any]) -> tuple[Any, nn.Module, Path]:
    """Tokenizer, a fresh base model as ``base_description`` describes it, and its local folder.

    Raises:
        ConfigError: the base model cannot be found or loaded.
    """
    model_cfg = ModelConfig(
        str(description.get("name_or_path", "")),
        str(description.get("gguf_file", "")),
        str(description.get("dtype", "float32")),
    )
    causal = description.get("format") in ("generation", "language_modeling")
    names = [str(n) for n in description.get("label_names") or []] or None
    tokenizer, model, new = load_model(model_cfg, causal, int(description.get("num_labels", 2)), names)
    quantize_base_(model, str(description.get("quantization", "none")), keep=tuple(new))  # as it was trained
    return tokenizer, model, hf_folder(model_cfg)


def loop_config(cfg: RunConfig, strategy: str, checkpoint_dir: str | None = None, progress: bool = False) -> LoopConfig:
    """The engine's settings for ``cfg`` (its ``train.*`` keys, the penalty's weight, the seed), under
    ``strategy``; the one mapping of ``train.*`` onto the engine, for `adarank train` and the analysis runs."""
    tr = cfg.train
    return LoopConfig(
        steps=tr.max_steps,
        batch_size=tr.batch_size,
        learning_rate=tr.learning_rate,
        grad_accum_steps=tr.grad_accum_steps,
        singular_lr_multiplier=tr.singular_lr_multiplier,
        weight_decay=tr.weight_decay,
        warmup_ratio=tr.warmup_ratio,
        orth_weight=cfg.adapter.orth_weight,
        seed=cfg.seed,
        strategy=strategy,
        save_steps=tr.save_steps,
        checkpoint_dir=checkpoint_dir,
        resume=bool(cfg.resume),
        log_steps=max(1, tr.max_steps // 20),
        eval_steps=tr.eval_steps,
        gradient_checkpointing=tr.gradient_checkpointing,
        progress=progress,
    )
