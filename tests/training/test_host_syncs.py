"""Host syncs in a training step: on a GPU every call that reads a device tensor on the host (``bool``,
``float``, ``item``, ``tolist``, ``nonzero``, a boolean-mask index, ...) stops the host until the device
catches up. adarank's own code must make none in a steady-state optimizer step (not a logging step, not
a masking step), in its engine and in the Trainer integration. Counted here on CPU with a
``TorchFunctionMode`` that sees every such call, attributed to the code that made it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_bert, tiny_config
from torch.overrides import TorchFunctionMode
from transformers import LlamaForCausalLM, TrainingArguments

import adarank.training.engine as engine
from adarank import AdaRankCallback, AdaRankTrainer, BudgetConfig, RankAllocator, inject_adapters
from adarank.config import ImportanceConfig
from adarank.data.tasks import IGNORE_INDEX, GenerationCollator
from adarank.training.engine import LoopConfig, train_loop

SYNCING = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy", "cpu", "nonzero"}
# Functions that work on the host's data before a batch moves to the device (their tensors never live there).
HOST_SIDE = {"batch_indices", "host_batch", "ScoredPositionsCollator.__call__"}
PACKAGE = str(Path(engine.__file__).resolve().parent.parent)  # .../adarank
SHIMS = {"overrides.py", "_tensor.py"}  # torch's dispatch to the mode and Tensor's Python methods
STEPS, LOG_STEPS = 30, 10


def _bool_index(args: tuple) -> bool:
    index = args[1] if len(args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class SyncCounter(TorchFunctionMode):
    """Records (step, call, file:line) for every syncing call made by adarank's code (the innermost frame
    outside torch that is in the package), except in HOST_SIDE functions."""

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.calls: list[tuple[int, str, str]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in SYNCING or (name == "__getitem__" and _bool_index(args)):
            where = self._caller()
            if where is not None:
                self.calls.append((self.step, name, where))
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _caller() -> str | None:
        """Where the call was written: the first frame outside torch's dispatch shims and this file. A call
        made inside torch's own Python code (AdamW reading its step count, kept on the host, say) or outside
        the package (transformers, the test) is not adarank's."""
        frame = sys._getframe(2)
        while frame is not None and ("/torch/" in frame.f_code.co_filename or frame.f_code.co_filename == __file__):
            if "/torch/" in frame.f_code.co_filename and Path(frame.f_code.co_filename).name not in SHIMS:
                return None
            frame = frame.f_back  # type: ignore[assignment]
        if frame is None or not frame.f_code.co_filename.startswith(PACKAGE):
            return None
        probe: Any = frame
        while probe is not None:
            if probe.f_code.co_qualname in HOST_SIDE and probe.f_code.co_filename.startswith(PACKAGE):
                return None
            probe = probe.f_back
        return f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} ({frame.f_code.co_name})"


def _steady(allocator: RankAllocator) -> set[int]:
    """The steps that are neither the first nor the last, nor a logging or masking step."""
    masking = {event["step"] for event in allocator.history}
    return {s for s in range(2, STEPS) if s % LOG_STEPS and s not in masking}


def _classifier() -> tuple[torch.nn.Module, RankAllocator, list[dict[str, torch.Tensor]], Any]:
    model = tiny_bert()
    adapters = inject_adapters(model, ["query", "value"], rank=4, alpha=8, modules_to_save=["classifier"], seed=0)
    budget = BudgetConfig(init_rank=4, target_rank=2, t_init=4, t_final=8, mask_interval=3)
    allocator = RankAllocator(adapters, budget, ImportanceConfig(task_only=True))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 90, (64, 12), generator=generator)
    rows = [{"input_ids": i, "labels": (i[0] > 50).long()} for i in ids]

    def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.stack([r["input_ids"] for r in batch]),
            "labels": torch.stack([r["labels"] for r in batch]),
        }

    return model, allocator, rows, collate


def _causal_lm() -> tuple[torch.nn.Module, RankAllocator, list[dict[str, list[int]]], Any]:
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(True, vocab_size=100, max_position_embeddings=64, num_key_value_heads=1))
    adapters = inject_adapters(model, ["q_proj", "v_proj"], rank=4, alpha=8, modules_to_save=[], seed=0)
    budget = BudgetConfig(init_rank=4, target_rank=2, t_init=4, t_final=8, mask_interval=3)
    allocator = RankAllocator(adapters, budget)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(64):  # prompts of different lengths, then a 1-3 token answer: the scored positions differ
        prompt = torch.randint(5, 90, (6 + i % 5,), generator=generator).tolist()
        answer = torch.randint(5, 90, (1 + i % 3,), generator=generator).tolist()
        ids = prompt + answer
        rows.append(
            {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE_INDEX] * len(prompt) + answer}
        )
    return model, allocator, rows, GenerationCollator(0)


def _count_engine(build: Any, monkeypatch: pytest.MonkeyPatch, extra: Any = None) -> tuple[SyncCounter, RankAllocator]:
    model, allocator, rows, collate = build()
    counter = SyncCounter()
    original = engine.batch_indices

    def marking(n_rows: int, seed: int, step: int, micro: int, *rest: int) -> list[int]:
        if micro == 0:
            counter.step = step  # every call from here to the next step's first batch is this step's
        return original(n_rows, seed, step, micro, *rest)

    monkeypatch.setattr(engine, "batch_indices", marking)
    if extra is not None:
        extra(monkeypatch)
    config = LoopConfig(steps=STEPS, batch_size=4, grad_accum_steps=2, learning_rate=1e-2, log_steps=LOG_STEPS,
                        max_grad_norm=1.0, orth_weight=0.1)  # fmt: skip
    with counter:
        train_loop(model, allocator, rows, collate, config)
    return counter, allocator


@pytest.mark.parametrize("build", [_classifier, _causal_lm], ids=["classifier-task-only", "causal-lm"])
def test_the_engine_makes_no_host_sync_in_a_steady_state_step(build: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    counter, allocator = _count_engine(build, monkeypatch)
    steady = _steady(allocator)
    assert len(steady) >= 10, steady
    assert [c for c in counter.calls if c[0] in steady] == []
    # the counter is not blind: the logging steps read the losses, the masking steps the scores
    assert any(c[0] == LOG_STEPS and c[1] == "tolist" for c in counter.calls), counter.calls
    assert any(c[0] == allocator.history[0]["step"] for c in counter.calls), counter.calls


def test_the_count_fails_when_a_sync_is_added(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the finite check was: its answer read on the host (``bool``) on every scoring step."""
    import adarank.core.allocator as allocator_module

    def add_sync(patch: pytest.MonkeyPatch) -> None:
        checked = allocator_module.finite_gradients

        def read_on_host(adapters: Any) -> Any:
            finite = checked(adapters)
            if finite is not None:
                bool(finite)  # the answer read on the host
            return finite

        patch.setattr(allocator_module, "finite_gradients", read_on_host)

    counter, allocator = _count_engine(_classifier, monkeypatch, add_sync)
    added = [c for c in counter.calls if c[0] in _steady(allocator)]
    assert added and {c[1] for c in added} == {"__bool__"}
    assert all(c[2].startswith("allocator.py:") for c in added), added  # attributed to the allocator's step


def test_the_trainer_integration_makes_no_host_sync_in_a_steady_state_step(tmp_path: Path) -> None:
    """AdaRankTrainer + AdaRankCallback: adarank's code (penalty, clipping share, scores, trace) adds none."""
    from datasets import Dataset

    model, allocator, rows, collate = _causal_lm()
    data = Dataset.from_list(rows)
    counter = SyncCounter()

    class Mark(AdaRankCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            counter.step = state.global_step + 1

    args = TrainingArguments(str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4,
                             gradient_accumulation_steps=2, learning_rate=1e-2, logging_steps=LOG_STEPS, report_to=[],
                             use_cpu=True, save_strategy="no", logging_nan_inf_filter=False, disable_tqdm=True,
                             dataloader_num_workers=0)  # fmt: skip
    trainer = AdaRankTrainer(model=model, args=args, train_dataset=data, data_collator=collate,
                             callbacks=[Mark(allocator)])  # fmt: skip
    with counter:
        trainer.train()
    steps = sorted(_steady(allocator))
    assert len(steps) >= 10
    assert [c for c in counter.calls if c[0] in set(steps)] == []
    assert any(c[0] == allocator.history[0]["step"] for c in counter.calls), counter.calls
