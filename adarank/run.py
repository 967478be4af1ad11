"""The main job: fine-tune a sequence classifier with adaptive-rank adapters and write a run directory.

Run directory contract: ``config.yaml`` (resolved), ``metrics.json``, ``allocation.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adarank.allocator import RankAllocator
from adarank.callback import AdaRankCallback
from adarank.config import ConfigError, RunConfig, to_yaml
from adarank.data import default_model_path, rotten_tomatoes
from adarank.inject import count_live_parameters, count_trainable, inject_adapters
from adarank.trainer import AdaRankTrainer


def _load_model(cfg: RunConfig, num_labels: int) -> tuple[Any, Any, list[str]]:
    """Tokenizer, model and the names of modules the checkpoint did not initialise (the new head)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = cfg.model.name_or_path or str(default_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # Llama-style tokenizers have none
        tokenizer.pad_token = tokenizer.eos_token
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, output_loading_info=True, dtype=torch.float32
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    new_modules = sorted({key.rsplit(".", 1)[0] for key in info["missing_keys"]})
    return tokenizer, model, new_modules


def prepare(cfg: RunConfig) -> tuple[Any, nn.Module, RankAllocator]:
    """Load the model, inject adapters and build the allocator; every problem raised before training.

    Raises:
        ConfigError: the model folder, target modules or head are invalid (all problems listed).
    """
    torch.manual_seed(cfg.seed)
    try:
        tokenizer, model, new_modules = _load_model(cfg, num_labels=2)
    except (OSError, ValueError) as err:
        raise ConfigError([f"model.name_or_path: cannot load a sequence classifier ({err})."]) from err
    problems = []
    try:
        adapters = inject_adapters(
            model,
            cfg.adapter.target_modules,
            rank=cfg.budget.init_rank,
            alpha=cfg.adapter.alpha,
            dropout=cfg.adapter.dropout,
            modules_to_save=[*new_modules, *cfg.adapter.modules_to_save],
            seed=cfg.seed,
        )
    except ValueError as err:
        problems.append(f"adapter.target_modules / adapter.modules_to_save: {err}")
    if problems:
        raise ConfigError(problems)
    allocator = RankAllocator(adapters, cfg.budget, cfg.importance, total_steps=cfg.train.max_steps)
    return tokenizer, model, allocator


def _wandb_mode(cfg: RunConfig) -> str:
    if cfg.wandb.mode:
        return cfg.wandb.mode
    has_key = bool(os.environ.get("WANDB_API_KEY")) or "api.wandb.ai" in _read(Path.home() / ".netrc")
    return "online" if has_key else "offline"


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _tokenize(tokenizer: Any, texts: list[str], labels: list[int], max_length: int, limit: int | None) -> Any:
    from datasets import Dataset

    texts, labels = texts[:limit], labels[:limit]
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    return Dataset.from_dict({**encoded, "labels": labels})


def accuracy(prediction: Any) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    """compute_metrics for the Trainer: fraction of argmax predictions equal to the label."""
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def build_datasets(tokenizer: Any, cfg: RunConfig) -> dict[str, Any]:
    """Tokenized train / validation / test splits of the configured task."""
    splits = rotten_tomatoes()
    return {
        name: _tokenize(
            tokenizer,
            *splits[name],
            cfg.data.max_length,
            cfg.data.max_train_samples if name == "train" else cfg.data.max_eval_samples,
        )
        for name in splits
    }


def training_arguments(cfg: RunConfig, output_dir: Path, report_to: list[str]) -> Any:
    """TrainingArguments for a run (no checkpoints; linear decay after warm-up)."""
    from transformers import TrainingArguments

    tr = cfg.train
    return TrainingArguments(
        output_dir=str(output_dir / "trainer"),
        max_steps=tr.max_steps,
        per_device_train_batch_size=tr.batch_size,
        per_device_eval_batch_size=tr.eval_batch_size,
        gradient_accumulation_steps=tr.grad_accum_steps,
        learning_rate=tr.learning_rate,
        weight_decay=tr.weight_decay,
        warmup_steps=int(tr.warmup_ratio * tr.max_steps),
        lr_scheduler_type="linear",
        logging_steps=max(1, tr.max_steps // 20),
        save_strategy="no",
        report_to=report_to,
        seed=cfg.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )


def _setup_wandb(cfg: RunConfig, out: Path) -> list[str]:
    """Trainer `report_to` for the configured wandb mode; never fails the run over wandb."""
    import importlib.util

    mode = _wandb_mode(cfg)
    if mode == "disabled":
        return []
    if importlib.util.find_spec("wandb") is None:
        print("wandb is not installed: no dashboards (pip install 'adarank[wandb]'); training goes on.")
        return []
    os.environ.update(WANDB_MODE=mode, WANDB_DIR=str(out.resolve()), WANDB_PROJECT=cfg.wandb.project)
    return ["wandb"]


def train(cfg: RunConfig) -> dict[str, Any]:
    """Fine-tune, evaluate on validation and test, and write the run directory; returns metrics."""
    from transformers import DataCollatorWithPadding

    tokenizer, model, allocator = prepare(cfg)
    plan = allocator.plan
    assert plan is not None
    data = build_datasets(tokenizer, cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    report_to = _setup_wandb(cfg, out)
    trainer = AdaRankTrainer(
        model=model,
        args=training_arguments(cfg, out, report_to),
        train_dataset=data["train"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
        callbacks=[AdaRankCallback(allocator)],
        orth_weight=cfg.adapter.orth_weight,
        singular_lr_multiplier=cfg.train.singular_lr_multiplier,
    )
    trainable_initial = count_trainable(model)
    print(
        f"adarank: {len(allocator.adapters)} adapters, budget {plan.initial_budget} -> "
        f"{plan.target_budget} triplets over {plan.total_steps} steps (final masks from step "
        f"{plan.final_start}), {trainable_initial:,} trainable parameters"
    )
    start = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - start
    validation = trainer.evaluate(data["validation"], metric_key_prefix="validation")
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    ranks = allocator.ranks()
    metrics = {
        "eval_accuracy": test["test_accuracy"],
        "validation_accuracy": validation["validation_accuracy"],
        "trainable_params_initial": trainable_initial,
        "trainable_params_final": count_live_parameters(model),
        "total_rank_final": sum(ranks.values()),
        "target_total_rank": plan.target_budget,
        "train_seconds": round(train_seconds, 2),
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "test_examples": len(data["test"]),
    }
    _write_json_atomic(out / "allocation.json", ranks)
    _write_json_atomic(out / "metrics.json", metrics)
    if report_to:
        import wandb

        if wandb.run is not None:
            wandb.run.summary.update({f"final/{k}": v for k, v in metrics.items()})
            wandb.finish()
    shown = (
        "eval_accuracy",
        "validation_accuracy",
        "total_rank_final",
        "target_total_rank",
        "trainable_params_initial",
        "trainable_params_final",
        "train_seconds",
    )
    print(json.dumps({k: metrics[k] for k in shown}, indent=2))
    print(f"run directory: {out}")
    return metrics
