"""The main job, as a recipe: check the data, set up the model, adapters and allocator, train with the
engine, evaluate, and write the run directory.

Run directory contract: ``config.yaml`` (resolved), ``metrics.json``, ``allocation.json``,
``allocation_history.json``, ``rank_trace.json``, ``train_log.json``, ``report.html`` with its PNGs,
``budget_plan.png`` and the native adapter export in ``adapter/``. Under torchrun every process trains;
only process 0 writes. The set-up and evaluation helpers live in ``adarank.training.setup`` and
``adarank.training.evaluate``; adarank 0.1 imported some of them from here, and they still import.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarank.config import ConfigError, RunConfig, to_yaml
from adarank.core.allocator import RankAllocator
from adarank.core.export import export_native
from adarank.core.families import expand_targets
from adarank.core.inject import count_live_parameters, count_trainable, model_type
from adarank.core.schedule import BudgetPlan
from adarank.core.sharding import gathered_trainables, shard_loaded_
from adarank.core.warm_start import warm_start_
from adarank.data import TaskData, load_task
from adarank.data.tasks import answer_tokens, build_datasets, model_columns, training_rows
from adarank.io.rundir import OutputLock, write_json_atomic
from adarank.reporting.dashboards import WandbDashboard, log_run_report, setup_wandb
from adarank.reporting.plan import plan_summary, plot_budget
from adarank.reporting.report import RunRecord, write_report
from adarank.training.engine import init_distributed, train_loop
from adarank.training.evaluate import classify_split, evaluate_splits, exact_match, mean_token_loss
from adarank.training.setup import CHATML as CHATML  # re-exported: adarank 0.1 imported these from here
from adarank.training.setup import base_description, check_chat_template, collator, loop_config, prepare
from adarank.training.setup import describe as describe
from adarank.training.setup import is_causal as is_causal
from adarank.training.setup import load_base as load_base
from adarank.training.setup import targets_or_raise as targets_or_raise
from adarank.training.trainer import check_launch as check_launch


def train(cfg: RunConfig) -> dict[str, Any]:
    """Read and check the data, fine-tune, evaluate on validation and test, and write the run directory;
    returns metrics. Nothing is written before the data and the model have passed their checks. One
    engine (``adarank.training.engine.train_loop``) for every strategy: one process, or under torchrun every
    process trains (``ddp``: whole models; ``fsdp2``: the base sharded) and process 0 writes.

    Raises:
        ConfigError: the data (``adarank.data.DataError``), model, targets or budget are invalid.
    """
    task = load_task(cfg.data)
    rank, _, _ = init_distributed()  # under fsdp2 prepare() loads so that no process holds the whole model
    tokenizer, model, allocator = prepare(cfg, task.label_names)
    check_chat_template(tokenizer, cfg)
    try:
        data = build_datasets(tokenizer, cfg, task)
    except ValueError as err:  # a chat template whose renderings cannot be aligned
        raise ConfigError([f"data.chat_template: {err}."]) from err
    out = Path(cfg.output_dir)
    if rank == 0:
        with OutputLock(out):
            return _train(cfg, task, tokenizer, model, allocator, data, out)
    return _train(cfg, task, tokenizer, model, allocator, data, out)


@dataclass
class _Trained:
    """What a training phase hands to ``_finish``: the model to evaluate and export (unwrapped, or
    sharded in place under FSDP2), the allocator's records and the run's counters."""

    model: nn.Module
    classify: Any
    history: list[dict[str, Any]]
    trace: list[dict[str, int]]
    log: list[dict[str, Any]]
    before: dict[str, float]
    train_seconds: float
    steps: int
    train_loss: float
    world_size: int
    main_process: bool
    trainable_initial: int
    wandb: bool = False


def _write_start(cfg: RunConfig, allocator: RankAllocator, out: Path) -> None:
    """config.yaml, the budget plan figure and the plan summary (process 0, before training)."""
    plan = allocator.plan
    assert plan is not None
    shapes = {n: (a.out_features, a.in_features) for n, a in allocator.adapters.items()}
    resolved = replace(cfg, resume=None, model=replace(cfg.model, name_or_path=cfg.model.name_or_path or "minilm"))
    (out / "config.yaml").write_text(to_yaml(resolved))  # repeats the run from scratch
    plot_budget(plan, out / "budget_plan.png")
    print(plan_summary(replace(cfg, budget=allocator.budget), shapes, allocator.base_params or 0))


def _warm_start(
    cfg: RunConfig, model: nn.Module, allocator: RankAllocator, rows: Any, collate: Any, world: int, main_process: bool
) -> None:
    """adapter.init=gradient (not on resume: the checkpoint holds P and Q): P and Q from the gradient of
    adapter.init_batches global batches (batch_size x world size rows each) of training rows drawn with the
    run's seed: the same rows, in the same batches, whatever the strategy and the number of processes."""
    if cfg.adapter.init != "gradient" or cfg.resume or not allocator.adapters:
        return
    size = cfg.train.batch_size * world
    count = min(len(rows), cfg.adapter.init_batches * size)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed))[:count].tolist()
    device = next(model.parameters()).device
    batches = (
        {k: v.to(device) for k, v in collate([rows[i] for i in order[s : s + size]]).items()}
        for s in range(0, count, size)
    )
    start = time.perf_counter()
    warm_start_(model, allocator.adapters, batches)
    if main_process:
        print(
            f"adarank: warm start: P and Q of {len(allocator.adapters)} adapters from the gradient of "
            f"{-(-count // size)} batch(es) of {size} ({time.perf_counter() - start:.1f} s)"
        )


def _floor(
    cfg: RunConfig, model: nn.Module, classify: Any, tokenizer: Any, task: TaskData, data: dict
) -> dict[str, float]:
    """The untrained base's metrics (`*_before`): the floor a causal-LM run must beat."""
    if not cfg.train.evaluate_before or cfg.data.format == "classification":
        return {}
    if cfg.data.format == "generation":
        floor = evaluate_splits(model, classify, tokenizer, cfg, task, data, ("test",))
        before = {"test_loss_before": floor["test_loss"], "test_answer_loss_before": floor["test_answer_loss"]}
        return before | ({"eval_accuracy_before": floor["test_accuracy"]} if "test_accuracy" in floor else {})
    floor = evaluate_splits(model, classify, tokenizer, cfg, task, data, ("validation",))
    return {f"{k}_before": v for k, v in floor.items()}


def _train(
    cfg: RunConfig, task: TaskData, tokenizer: Any, model: nn.Module, allocator: RankAllocator, data: dict, out: Path
) -> dict[str, Any]:
    """Place the model for the strategy, warm-start, train with the engine, then ``_finish``. Under
    FSDP2 every process evaluates every split in lockstep on the sharded model (the forward passes
    gather the shards); process 0 logs to wandb."""
    targets = expand_targets(cfg.adapter.target_modules, model_type(model))  # `auto` as the modules it picked:
    cfg = replace(cfg, adapter=replace(cfg.adapter, target_modules=targets))  # so config.yaml and the report say
    rank, world, device = init_distributed()
    main_process = rank == 0
    fsdp2 = cfg.distributed.strategy == "fsdp2"
    if main_process:
        _write_start(cfg, allocator, out)
    trainable_initial = count_trainable(model)
    tr = cfg.train
    collate = collator(cfg, tokenizer)
    train_rows = training_rows(data["train"], cfg.data)
    if not fsdp2:
        model.to(device)
    if main_process or not fsdp2:  # a warm start under FSDP2: process 0 alone holds the weights, sends P and Q
        _warm_start(cfg, model, allocator, train_rows, collate, world, main_process)
    if fsdp2:
        shard_loaded_(model, device)
    dashboard = None
    if setup_wandb(cfg.wandb.mode, cfg.wandb.project, out) and main_process:
        dashboard = WandbDashboard(allocator, cfg.wandb.project, trainable_initial)
        dashboard.begin(config=asdict(cfg))  # named after the run directory, the config attached
        dashboard = dashboard if dashboard.active else None

    def classify(split: str) -> dict[str, float]:
        return classify_split(model, model_columns(data[split]), collate, tr.eval_batch_size)

    def validation() -> dict[str, float]:  # the curve during training: loss (and accuracy for a classifier)
        if cfg.data.format == "classification":
            return classify("validation")
        rows = model_columns(data["validation"])  # generation rows carry raw columns; language-modeling blocks none
        return {"loss": mean_token_loss(model, rows, tokenizer.pad_token_id, tr.eval_batch_size, "validation loss")}

    def on_step(step: int, allocator: RankAllocator) -> None:
        event = allocator.last_event
        if dashboard is not None and event is not None and event["step"] == step:
            dashboard.log_event(event)

    strategy = "fsdp2" if fsdp2 else "ddp" if world > 1 else "none"
    loop = loop_config(cfg, strategy, checkpoint_dir=str(out / "trainer"), progress=True)
    before = _floor(cfg, model, classify, tokenizer, task, data)
    start = time.perf_counter()
    model, result = train_loop(
        model,
        allocator,
        train_rows,
        collate,
        loop,
        on_step=on_step,
        evaluate=validation,
        on_log=dashboard.log_train if dashboard is not None else None,
    )
    if dashboard is not None:
        dashboard.end(result.global_step, finish=False)  # _finish logs the report into the run, then ends it
    trained = _Trained(
        model=model,
        classify=classify,
        history=allocator.history,
        trace=allocator.trace,
        log=result.log_history,
        before=before,
        train_seconds=time.perf_counter() - start,
        steps=result.global_step,
        train_loss=result.train_loss,
        world_size=world,
        main_process=main_process,
        trainable_initial=trainable_initial,
        wandb=dashboard is not None,
    )
    return _finish(cfg, task, tokenizer, allocator, data, out, trained)


def _finish(
    cfg: RunConfig, task: TaskData, tokenizer: Any, allocator: RankAllocator, data: dict, out: Path, trained: _Trained
) -> dict[str, Any]:
    """Evaluate, and on process 0 write metrics, allocation, trace, log, report and the native export."""
    plan = allocator.plan
    assert plan is not None
    model = trained.model
    ranks = allocator.ranks()
    scores = evaluate_splits(model, trained.classify, tokenizer, cfg, task, data, ("test", "validation"))
    if "test_accuracy" in scores:
        scores["eval_accuracy"] = scores["test_accuracy"]  # the same test accuracy, under the name outside checks read
    samples = _samples(model, tokenizer, cfg, task, data) if cfg.data.format == "generation" else []
    scores |= _truncation_counts(data)
    with gathered_trainables(model):  # a collective under FSDP2; the export below reads whole tensors
        metrics = {
            **scores,
            **trained.before,
            "trainable_params_initial": trained.trainable_initial,
            "trainable_params_final": count_live_parameters(model),
            "adapter_params_final": sum(r * allocator.triplet_costs[n] for n, r in ranks.items()),
            "total_rank_final": sum(ranks.values()),
            "target_total_rank": plan.target_budget if plan.unit == "triplets" else None,
            "budget_unit": plan.unit,
            "target_params": plan.target_budget if plan.unit == "params" else None,
            "train_seconds": round(trained.train_seconds, 2),
            "steps": trained.steps,
            "train_loss": trained.train_loss,
            "test_examples": len(data["test"]),
            "world_size": trained.world_size,
        }
        if trained.main_process:
            export_native(model, out / "adapter", base_description(cfg, task.label_names), overwrite=True)
    if not trained.main_process:
        return metrics
    write_json_atomic(out / "allocation.json", ranks)
    history = {str(e["step"]): {k: v for k, v in e.items() if k != "step"} for e in trained.history}
    write_json_atomic(out / "allocation_history.json", history)
    write_json_atomic(out / "rank_trace.json", trained.trace)
    write_json_atomic(out / "train_log.json", trained.log)
    record = RunRecord(
        plan=plan,
        history=trained.history,
        initial_ranks=dict(allocator.initial_ranks),
        ranks=ranks,
        metrics=metrics,
        trace=trained.trace,
        log=trained.log,
        scores=list(allocator.masked_scores),
        description=run_description(cfg, task, data, plan, len(allocator.initial_ranks)),
        config_text=(out / "config.yaml").read_text(),
        samples=samples,
    )
    report = write_report(out, record)
    write_json_atomic(out / "metrics.json", metrics)
    if trained.wandb:
        log_run_report(sorted(report.parent.glob("*.png")), metrics, samples)
    shown = (
        "test_accuracy",
        "validation_accuracy",
        "test_macro_f1",
        "eval_accuracy_before",
        "test_answer_loss",
        "validation_perplexity_before",
        "validation_perplexity",
        "test_perplexity",
        "total_rank_final",
        "target_total_rank",
        "trainable_params_initial",
        "trainable_params_final",
        "adapter_params_final",
        "train_seconds",
    )
    print(json.dumps({k: metrics[k] for k in shown if k in metrics}, indent=2))
    print(f"run directory: {out}")
    return metrics


SAMPLES = 3


def _samples(model: nn.Module, tokenizer: Any, cfg: RunConfig, task: TaskData, data: dict) -> list[dict[str, str]]:
    """The first test prompts (their last 400 characters), references and greedy outputs (exact match's
    length, or 48 tokens)."""
    rows = data["test"].select(range(min(SAMPLES, len(data["test"]))))
    tokens = answer_tokens(tokenizer, cfg.data, task) or 48
    prompt_ids, references = [list(p) for p in rows["prompt_ids"]], list(rows["reference"])
    _, generated = exact_match(model, tokenizer, prompt_ids, references, tokens, SAMPLES)
    prompts = [tokenizer.decode(p) for p in prompt_ids]
    return [
        {"prompt": p[-400:], "reference": r, "generated": g}
        for p, r, g in zip(prompts, references, generated, strict=True)
    ]


def _truncation_counts(data: dict) -> dict[str, int]:
    """Generation: rows (all splits) whose prompt lost its start and rows with response tokens cut."""
    splits = [d for d in data.values() if "truncated" in d.column_names]
    if not splits:
        return {}
    return {
        "truncated_prompt_rows": sum(int(sum(d["truncated"])) for d in splits),
        "cut_response_rows": sum(int(sum(d["cut"])) for d in splits),
    }


def run_description(cfg: RunConfig, task: TaskData, data: dict, plan: BudgetPlan, adapters: int) -> dict[str, str]:
    """The report's "Run" table: model, data, method, budget and training settings in words."""
    budget = cfg.budget
    method = (
        f"LoRA, rank {budget.init_rank} (constant schedule)"
        if not plan.adapts
        else f"AdaLoRA, {budget.schedule} schedule, rank {budget.init_rank} per adapter at the start"
    )
    sizes = " / ".join(f"{len(data[s]):,} {s}" for s in ("train", "validation", "test") if s in data)
    return {
        "model": f"{cfg.model.name_or_path or 'minilm'} ({cfg.model.dtype})",
        "data": f"{cfg.data.dataset} as {cfg.data.format}: {sizes} rows"
        + (f"; labels {', '.join(task.label_names)}" if task.label_names else ""),
        "adapters": f"{adapters} modules matching {', '.join(cfg.adapter.target_modules)}",
        "method": method,
        "budget": f"b(0) = {plan.initial_budget:,} -> b(T) = {plan.target_budget:,} {plan.unit}"
        + (f"; warm-up to step {plan.t_init}, final phase from step {plan.final_start}" if plan.adapts else ""),
        "training": f"{cfg.train.max_steps} steps of batch {cfg.train.batch_size} x {cfg.train.grad_accum_steps}, "
        f"lr {cfg.train.learning_rate:g}, seed {cfg.seed}",
        "run directory": cfg.output_dir,
    }
