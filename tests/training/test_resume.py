"""Exact resume: a run stopped mid-decay and resumed from its checkpoint allocates exactly like a run
that never stopped; without the allocator state it does not (the test is sensitive); a process
killed with SIGKILL resumes from its last complete checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model, tiny_bert
from test_trainer import _args, _dataset
from transformers import Trainer, TrainerCallback

from adarank import AdaRankCallback, AdaRankTrainer, BudgetConfig, RankAllocator, inject_adapters
from adarank.training.callback import ALLOCATOR_STATE, latest_complete_checkpoint

BUDGET = BudgetConfig(init_rank=4, target_rank=2, t_init=4, t_final=6, mask_interval=2)


class Masks(TrainerCallback):
    """The kept-lambda pattern and forward mask of every adapter after each masking step."""

    def __init__(self, allocator: RankAllocator) -> None:
        self.allocator = allocator
        self.events: dict[int, dict] = {}

    def on_optimizer_step(self, args, state, control, **kwargs):
        event = self.allocator.last_event
        if event is not None and event["step"] == state.global_step + 1:
            adapters = self.allocator.adapters.items()
            self.events[event["step"]] = {
                n: ((a.singular_values != 0).tolist(), a.rank_mask.tolist()) for n, a in adapters
            }


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _trainer(out: Path, extra: list | None = None):
    model = tiny_bert()
    adapters = inject_adapters(model, ["all-linear"], rank=4, alpha=8, seed=0, modules_to_save=["classifier"])
    allocator = RankAllocator(adapters, BUDGET)
    masks = Masks(allocator)
    trainer = AdaRankTrainer(
        model=model,
        args=_args(out, max_steps=24, per_device_train_batch_size=8, learning_rate=5e-3, save_strategy="steps",
                   save_steps=4, max_grad_norm=1.0),
        train_dataset=_dataset(96),
        callbacks=[AdaRankCallback(allocator), masks, *(extra or [])],
        singular_lr_multiplier=10,
    )  # fmt: skip
    return trainer, allocator, masks


def _adapter_state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "vectors" in k or "singular" in k or "rank_mask" in k}


def test_resume_mid_decay_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    whole, _, whole_masks = _trainer(tmp_path / "whole")
    whole.train()

    stopped, _, _ = _trainer(tmp_path / "run", [StopAt(10)])
    with pytest.raises(RuntimeError, match="rank allocation did not finish: 10 of 24 steps"):
        stopped.train()  # an interrupted run is never passed off as finished
    checkpoint = latest_complete_checkpoint(tmp_path / "run")
    assert checkpoint is not None and checkpoint.name == "checkpoint-8"  # decay runs from step 4 to 18

    (tmp_path / "run" / "checkpoint-12").mkdir()  # a half-written checkpoint (no allocator state)
    assert latest_complete_checkpoint(tmp_path / "run") == checkpoint

    resumed, allocator, resumed_masks = _trainer(tmp_path / "run")
    resumed.train(resume_from_checkpoint=True)
    later = {s: m for s, m in whole_masks.events.items() if s > 8}
    assert sorted(later) == [10, 12, 14, 16, 18] and resumed_masks.events == later
    whole_state, resumed_state = _adapter_state(whole.model), _adapter_state(resumed.model)
    assert whole_state.keys() == resumed_state.keys()
    for key, value in whole_state.items():
        assert torch.equal(value, resumed_state[key]), key  # bitwise

    # control: the same resume without the allocator state ends elsewhere
    control, _, control_masks = _trainer(tmp_path / "run")
    Trainer.train(control, resume_from_checkpoint=str(checkpoint))  # bypasses AdaRankTrainer's restore
    assert control_masks.events != later


def test_resume_without_a_complete_checkpoint_is_refused(tmp_path: Path) -> None:
    trainer, _, _ = _trainer(tmp_path / "empty")
    (tmp_path / "empty" / "checkpoint-4").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint under"):
        trainer.train(resume_from_checkpoint=True)
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, AdaRankCallback))
    with pytest.raises(FileNotFoundError, match=f"holds no adarank allocator state \\({ALLOCATOR_STATE}\\)"):
        callback.load_checkpoint(tmp_path / "empty" / "checkpoint-4")


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "model", llama=False)
    common = [f"model.name_or_path={tmp_path / 'model'}", "adapter.target_modules=[all-linear]", "train.max_steps=60",
              "train.batch_size=8", "data.max_train_samples=480", "data.max_eval_samples=16", "budget.init_rank=3",
              "budget.target_rank=1", "budget.t_init=5", "budget.t_final=10", "budget.mask_interval=2",
              "train.save_steps=5", "wandb.mode=disabled"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "adarank", "train"]
    done = subprocess.run(
        [*run, f"output_dir={tmp_path / 'whole'}", *common], env=env, capture_output=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]

    victim = subprocess.Popen([*run, f"output_dir={tmp_path / 'killed'}", *common], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    marker = tmp_path / "killed" / "trainer" / "checkpoint-20" / ALLOCATOR_STATE
    deadline = time.time() + 300
    while not marker.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists()

    resumed = subprocess.run([*run, f"resume={tmp_path / 'killed'}"], env=env, capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    again = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert again["steps"] == whole["steps"] == 60
    for name in ("allocation.json", "allocation_history.json", "rank_trace.json"):  # the trace: every step from 0
        assert json.loads((tmp_path / "killed" / name).read_text()) == json.loads(
            (tmp_path / "whole" / name).read_text()
        )
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
