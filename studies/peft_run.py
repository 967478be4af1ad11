"""Train PEFT's LoRA, AdaLoRA or EVA on an adarank config, for side-by-side comparisons.

    python studies/peft_run.py lora configs/rt-minilm-lora.yaml [key=value ...]
    python studies/peft_run.py adalora configs/rt-minilm-adalora.yaml [key=value ...]
    python studies/peft_run.py eva studies/configs/facts-smollm2-lora.yaml [key=value ...]

The config and overrides are read by adarank's own loader, so the model, data, target modules,
seed, steps, batch, learning rate and its schedule, alpha, betas, orthogonality weight and the
budget schedule are the ones an `adarank train` run of the same file would use. It writes
`OUTPUT_DIR/metrics.json` with the keys of adarank's metrics.json that studies/sweep.py reads.

Budgets. LoRA gets the config's final budget from the start, as adarank's constant schedule does:
the largest uniform rank that fits `budget.target_params`, or `budget.target_rank`. AdaLoRA gets
init_r = `budget.init_rank` and target_r = the final budget in ranks per module (PEFT's budget is in
ranks: with target_params the modules must all cost the same per rank, so that the two budgets are
the same). t_init, t_final and
the mask interval become PEFT's tinit, tfinal and deltaT; total_step is train.max_steps. EVA
(`init_lora_weights="eva"`, peft >= 0.13) gets LoRA's rank r as its average: before training, the SVD of
each module's inputs on training batches (answer tokens only: PEFT's label mask) gives A its top right
singular vectors and redistributes the r x modules ranks by explained variance, at most rho r = 2r per
module (PEFT's default rho); its budget is in ranks, so its parameters follow where the ranks went (the
metrics record them).

PEFT's AdaLoRA is driven the way its docs say: `update_and_allocate(step)` after every optimizer
step, before the gradients are zeroed (a Trainer callback in `on_optimizer_step`). Its orthogonality
penalty is PEFT's own (added inside forward). It has no separate learning rate for lambda
(`train.singular_lr_multiplier` is ignored).
Classification and generation configs (generation: no head; exact match and answer loss measured by
adarank's own functions, on the same rows, so the metrics compare directly). A generation run's
training step runs the output head on the answer tokens alone, as adarank's trainer does
(`adarank.training.trainer.scored_training_inputs`; PEFT's wrapper passes `logits_to_keep` and `shift_labels` through to
the base model), so training times compare too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback

from adarank.checks import load_config
from adarank.config import ConfigError, RunConfig
from adarank.core.inject import module_shapes
from adarank.core.schedule import constant_rank_budget, plan_budget
from adarank.core.sharding import unwrap
from adarank.data import load_task
from adarank.data.tasks import GenerationCollator, answer_tokens, build_datasets, model_columns, training_rows
from adarank.io.models import load_model
from adarank.training.evaluate import classification_accuracy, exact_match, forced_answers, scored_pass
from adarank.training.trainer import keeps_trainer_loss, scored_positions_loader, scored_training_inputs


class ScoredLossTrainer(Trainer):
    """Trainer whose training steps run the head on the scored positions only, as adarank's do
    (``scored_training_inputs`` with PEFT's base model, which PEFT's LoRA and AdaLoRA hand
    ``logits_to_keep`` and ``shift_labels`` to), so training times compare."""

    @keeps_trainer_loss
    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        inputs = scored_training_inputs(self, model, inputs, head_model=unwrap(model).get_base_model())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def get_train_dataloader(self) -> Any:
        """The loader with the scored positions found on the host, as adarank's engine does (no device sync)."""
        return scored_positions_loader(self, unwrap(self.model).get_base_model(), super().get_train_dataloader)


class AllocateEachStep(TrainerCallback):
    """Call PEFT AdaLoRA's update_and_allocate after each optimizer step (grads still present)."""

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        model.base_model.update_and_allocate(state.global_step)


def training_arguments(cfg: RunConfig, output_dir: Path, report_to: list[str]) -> Any:
    """TrainingArguments from a run config's train.* keys, for the PEFT baselines, which train in the
    transformers Trainer (adarank's own runs use its engine)."""
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
        eval_strategy="steps" if tr.eval_steps else "no",
        eval_steps=tr.eval_steps,
        save_strategy="steps" if tr.save_steps else "no",
        save_steps=tr.save_steps or 500,
        save_total_limit=2,  # the newest may be half-written when a process dies; the one before is complete
        report_to=report_to,
        seed=cfg.seed,
        use_cpu=not torch.cuda.is_available(),  # on CPU DDP needs it, or each process runs alone
        dataloader_num_workers=0,
        logging_nan_inf_filter=False,  # its check reads the loss on the host every micro-batch
        activation_checkpointing=tr.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False},  # the frozen base's inputs need no grad
    )


def peft_config(method: str, cfg: RunConfig, shapes: dict[str, tuple[int, int]], base_params: int) -> Any:
    """PEFT LoraConfig / AdaLoraConfig with the budget an adarank run of ``cfg`` would get."""
    from peft import AdaLoraConfig, LoraConfig

    costs = [o + i + 1 for o, i in shapes.values()]
    common = {"lora_alpha": cfg.adapter.alpha, "lora_dropout": cfg.adapter.dropout,
              "target_modules": list(shapes), "modules_to_save": None}  # fmt: skip
    if method in ("lora", "eva"):
        final = replace(cfg.budget, schedule="constant", init_rank=cfg.budget.target_rank)  # kept from the start
        rank = constant_rank_budget(final, costs, base_params).init_rank
        if method == "lora":
            return LoraConfig(r=rank, **common)
        from peft import EvaConfig

        return LoraConfig(r=rank, init_lora_weights="eva", eva_config=EvaConfig(rho=2.0), **common)
    plan = plan_budget(cfg.budget, cfg.train.max_steps, costs, base_params)
    if plan.unit == "params":
        if len(set(costs)) != 1 or plan.target_budget % sum(costs):
            problem = (
                f"PEFT's AdaLoRA budget is in ranks: {plan.target_budget:,} parameters is not a whole rank per "
                "module here; use budget.target_rank or a multiple of the per-rank cost."
            )
            raise ConfigError([problem])
        target_r = plan.target_budget // sum(costs)
    else:
        target_r = plan.target_budget // len(costs)
    return AdaLoraConfig(
        init_r=cfg.budget.init_rank,
        target_r=target_r,
        tinit=plan.t_init,
        tfinal=plan.t_final,
        deltaT=plan.mask_interval,
        beta1=cfg.importance.beta_sensitivity,
        beta2=cfg.importance.beta_uncertainty,
        orth_reg_weight=cfg.adapter.orth_weight,
        total_step=cfg.train.max_steps,
        **common,
    )


def _eva_init(model: Any, rows: Any, tokenizer: Any, cfg: RunConfig) -> None:
    """EVA's data-driven start: PEFT's SVD of every target module's inputs over shuffled training batches
    of train.batch_size (prompt and answer tokens of generation rows; PEFT masks out label -100)."""
    from peft import initialize_lora_eva_weights
    from torch.utils.data import DataLoader

    if cfg.data.format != "generation":
        raise ConfigError(["peft_run.py eva runs generation configs (its inputs are token sequences with labels)."])
    columns = training_rows(rows, cfg.data)
    loader = DataLoader(
        columns,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        collate_fn=GenerationCollator(tokenizer.pad_token_id),
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    initialize_lora_eva_weights(model, loader, show_progress_bar=False)


def live_adapter(model: torch.nn.Module) -> tuple[int, int]:
    """(total live rank, live adapter parameters) of a PEFT LoRA/AdaLoRA model; a triplet of AdaLoRA
    is live when its lambda is non-zero, and costs d_in + d_out + 1 (LoRA: d_in + d_out per rank)."""
    rank = params = 0
    for module in model.modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        d_out, d_in = module.get_base_layer().weight.shape
        if hasattr(module, "lora_E"):
            live = int((module.lora_E["default"] != 0).sum())
            rank, params = rank + live, params + live * (d_in + d_out + 1)
        else:
            r = module.r["default"]
            rank, params = rank + r, params + r * (d_in + d_out)
    return rank, params


def live_ranks(model: torch.nn.Module) -> dict[str, int]:
    """Module name (as in the base model) -> live rank of a PEFT LoRA/AdaLoRA model, as adarank's allocation.json."""
    ranks = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            live = int((module.lora_E["default"] != 0).sum()) if hasattr(module, "lora_E") else module.r["default"]
            ranks[name.removeprefix("base_model.model.")] = live
    return ranks


def train_peft(method: str, cfg: RunConfig) -> dict[str, Any]:
    """Train PEFT's ``method`` (lora | adalora | eva) as an adarank run of ``cfg`` would train; returns the metrics.

    Raises:
        ConfigError: the budget cannot be expressed for PEFT (before any training).
    """
    from peft import get_peft_model

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # same head initialisation as adarank's run of this seed
    task = load_task(cfg.data)
    names = task.label_names
    causal = cfg.data.format == "generation"
    tokenizer, base, head = load_model(cfg.model, generation=causal, num_labels=len(names), label_names=names)
    shapes = module_shapes(base, cfg.adapter.target_modules)
    config = peft_config(method, cfg, shapes, sum(p.numel() for p in base.parameters()))
    config.modules_to_save = head or None
    if causal:
        config.task_type = "CAUSAL_LM"
    model = get_peft_model(base, config)
    data = build_datasets(tokenizer, cfg, task)
    if method == "eva":
        _eva_init(model, data["train"], tokenizer, cfg)
    trainable_initial = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head_params = trainable_initial - sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n
    )
    trainer = ScoredLossTrainer(
        model=model,
        args=training_arguments(cfg, out, []),
        train_dataset=training_rows(data["train"], cfg.data),
        data_collator=GenerationCollator(tokenizer.pad_token_id) if causal else DataCollatorWithPadding(tokenizer),
        compute_metrics=None if causal else classification_accuracy,
        callbacks=[AllocateEachStep()] if method == "adalora" else [],
    )
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    rank, params = live_adapter(model)

    scores = {}
    for split in ("test", "validation"):
        if causal:
            rows = data[split]
            tokens = answer_tokens(tokenizer, cfg.data, task) or 1
            batch = cfg.train.eval_batch_size
            loss, predictions = scored_pass(model, model_columns(rows), tokenizer.pad_token_id, batch)
            known = forced_answers(model, tokenizer, rows, predictions, tokens)
            accuracy, _ = exact_match(model, tokenizer, rows["prompt_ids"], rows["reference"], tokens, batch, known)
            scores[f"{split}_accuracy"] = accuracy
            scores[f"{split}_answer_loss"] = loss
        else:
            found = trainer.evaluate(model_columns(data[split]), metric_key_prefix="m")
            scores[f"{split}_accuracy"] = float(found["m_accuracy"])
    return {
        **scores,
        "eval_accuracy": scores["test_accuracy"],
        "trainable_params_initial": trainable_initial,
        "trainable_params_final": params + head_params,
        "adapter_params_final": params,
        "total_rank_final": rank,
        "train_seconds": round(seconds, 2),
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "method": f"peft-{method}",
        "peft_config": {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, list))},
        "ranks": live_ranks(model),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("method", choices=("lora", "adalora", "eva"))
    parser.add_argument("config", type=Path)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.data.format == "language_modeling":
            parser.error("peft_run.py runs classification and generation configs, not language_modeling.")
        metrics = train_peft(args.method, cfg)
    except ConfigError as err:
        parser.exit(2, f"{err}\n")
    out = Path(cfg.output_dir)  # train_peft made it
    (out / "metrics.json.tmp").write_text(json.dumps(metrics, indent=2))
    (out / "metrics.json.tmp").replace(out / "metrics.json")
    print(json.dumps({k: metrics[k] for k in list(metrics)[:8]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
