"""The training runs behind `adarank intrinsic-dim` (``adarank.analysis.intrinsic``): the floor (the base,
or the head trained alone), the reference (a full fine-tune of the target modules) and a run inside a
random d-dimensional subspace, each trained with adarank's engine on the run's data (one process) and
scored on validation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from adarank.analysis.subspace import attach_subspace_, subspace_parameters
from adarank.config import ConfigError, IntrinsicDimRunConfig
from adarank.core.allocator import RankAllocator
from adarank.core.export import ExportError, read_native, trained_tensors
from adarank.core.inject import select_modules
from adarank.data import load_task
from adarank.data.tasks import answer_tokens, build_datasets, model_columns, training_rows
from adarank.io.models import load_model
from adarank.training.engine import train_loop
from adarank.training.evaluate import classify_split, evaluate_splits
from adarank.training.setup import check_chat_template, collator, is_causal, loop_config, targets_or_raise


class Runner:
    """Loads the task once and trains one configuration per call: the head alone (floor), the target
    weights in full (reference) or a random subspace of them."""

    def __init__(self, cfg: IntrinsicDimRunConfig):

        self.cfg = cfg
        self.causal = is_causal(cfg)
        self.task = load_task(cfg.data)
        names = self.task.label_names
        self.tokenizer, model, self.head_modules = load_model(cfg.model, self.causal, len(names) or 2, names or None)
        targets_or_raise(model, cfg)
        check_chat_template(self.tokenizer, cfg)
        self.data = build_datasets(self.tokenizer, cfg, self.task)
        kind = cfg.intrinsic_dim.metric or (
            "loss" if cfg.data.format == "language_modeling" or not (
                cfg.data.format == "classification" or answer_tokens(self.tokenizer, cfg.data, self.task))
            else "accuracy"
        )  # fmt: skip
        if kind == "accuracy" and self.causal and not answer_tokens(self.tokenizer, cfg.data, self.task):
            raise ConfigError(["intrinsic_dim.metric=accuracy needs exact match: set data.max_answer_tokens."])
        self.metric = f"validation_{kind}"
        self.higher_is_better = kind == "accuracy"
        covered = self._covered(model)
        self.subspace_size, self.layer_scales = sum(covered.values()), len(covered)
        self.head_state: dict[str, torch.Tensor] | None = None

    def _covered(self, model: Any) -> dict[str, int]:

        head = self.head_modules if self.cfg.intrinsic_dim.head == "subspace" else []
        return {n: p.numel() for n, p in subspace_parameters(model, self._modules(model), head).items()}

    def _modules(self, model: Any) -> dict[str, Any]:

        return select_modules(model, self.cfg.adapter.target_modules)

    def _fresh(self, seed: int) -> Any:
        from transformers.utils import logging as hf_logging

        torch.manual_seed(seed)  # a new head's initialisation
        names = self.task.label_names
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the new-head notice was shown once, when the task was checked
        try:
            _, model, _ = load_model(self.cfg.model, self.causal, len(names) or 2, names or None)
        finally:
            hf_logging.set_verbosity(verbosity)
        return model

    def floor(self) -> float:
        if self.head_modules and self.cfg.intrinsic_dim.floor_run:
            run = Path(self.cfg.intrinsic_dim.floor_run)
            self.head_state = _head_from_run(run, self.head_modules)
            return run_metric(run, self.metric, "intrinsic_dim.floor_run")
        model = self._fresh(self.cfg.seed)
        if not self.head_modules:  # a causal LM, or a head from the checkpoint: the untrained base
            return self._train(model, self.cfg.train.learning_rate, self.cfg.seed, steps=False)
        model.requires_grad_(False)
        for name in self.head_modules:
            model.get_submodule(name).requires_grad_(True)
        value = self._train(model, self.cfg.train.learning_rate, self.cfg.seed)
        self.head_state = {
            f"{m}.{n}": p.detach().clone()
            for m in self.head_modules
            for n, p in model.get_submodule(m).named_parameters()
        }
        return value

    def reference(self) -> float:
        model = self._fresh(self.cfg.seed)
        model.requires_grad_(False)
        for module in self._modules(model).values():
            module.weight.requires_grad_(True)
        for name in self.head_modules:
            model.get_submodule(name).requires_grad_(True)
        return self._train(model, self.cfg.intrinsic_dim.reference_learning_rate, self.cfg.seed)

    def subspace(self, dim: int, seed: int) -> float:

        idim = self.cfg.intrinsic_dim
        model = self._fresh(seed)
        head: list[str] = list(self.head_modules)
        if idim.head == "fixed" and self.head_modules:
            if self.head_state is None:  # the floor came from the points file: rebuild its head
                self.floor_head()
            assert self.head_state is not None
            missing = model.load_state_dict(self.head_state, strict=False).missing_keys
            assert not set(self.head_state) & set(missing)
            head = []
        parameters = subspace_parameters(model, self._modules(model), head)
        attach_subspace_(model, parameters, dim, nonzeros=idim.nonzeros, layer_scaling=idim.layer_scaling, seed=seed)
        return self._train(model, idim.learning_rate, seed)

    def floor_head(self) -> None:
        """The fixed head when the floor measurement was resumed rather than trained in this process."""
        if self.cfg.intrinsic_dim.floor_run:
            self.head_state = _head_from_run(Path(self.cfg.intrinsic_dim.floor_run), self.head_modules)
        else:
            self.floor()

    def _train(self, model: Any, learning_rate: float, seed: int, steps: bool = True) -> float:
        """Train ``model``'s trainable parameters (unless not ``steps``) with adarank's engine (in this
        process; no adapters, so no allocation and no penalty) and return the validation metric."""
        cfg = replace(self.cfg, seed=seed, resume=None, train=replace(self.cfg.train, learning_rate=learning_rate,
                                                                      eval_steps=None, save_steps=None))  # fmt: skip
        collate = collator(cfg, self.tokenizer)
        if steps:
            allocator = RankAllocator({}, cfg.budget, total_steps=cfg.train.max_steps)
            rows = training_rows(self.data["train"], cfg.data)
            model, _ = train_loop(model, allocator, rows, collate, loop_config(cfg, "none"))
        if self.causal:
            scores = evaluate_splits(model, None, self.tokenizer, cfg, self.task, self.data, ("validation",))
            return float(scores[self.metric])
        found = classify_split(model, model_columns(self.data["validation"]), collate, cfg.train.eval_batch_size)
        return float(found[self.metric.removeprefix("validation_")])


def _head_from_run(run: Path, head_modules: list[str]) -> dict[str, torch.Tensor]:
    """The head a head-only run trained, from its native adapter export."""

    try:
        head = trained_tensors(*read_native(run / "adapter"))
    except ExportError as err:
        raise ConfigError([f"intrinsic_dim.floor_run: {err}"]) from err
    wanted = {k for k in head if k.rsplit(".", 1)[0] in head_modules}
    if not wanted:
        raise ConfigError([
            f"intrinsic_dim.floor_run `{run}` holds no trained head ({', '.join(head_modules)}); give a head-only run."
        ])  # fmt: skip
    return {k: head[k] for k in wanted}


def run_metric(run: Path, metric: str, key: str) -> float:
    metrics = json.loads((run / "metrics.json").read_text())
    if metric not in metrics:
        raise ConfigError([f"{key}: `{run}/metrics.json` has no `{metric}`; give a run of the same task and format."])
    return float(metrics[metric])
