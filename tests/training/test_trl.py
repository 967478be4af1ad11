"""TRL's SFTTrainer (the real one) with adarank: mixed in (`class AdaRankSFTTrainer(AdaRankTrainer, SFTTrainer)`)
it gets the whole method on chat data with assistant-only loss and on prompt/completion data; with the
callback alone it gets the penalty after clipping and a warning that lambda's multiplier is missing. The
second host trainer, TRL's DPOTrainer, mixed in the same way.

At step 1 lambda is 0, so P and Q get no task gradient: their gradient is the penalty's alone, which the
tests compute by hand (d/dP ||P^T P - I||^2 = 4 P (P^T P - I), d/dQ ||Q Q^T - I||^2 = 4 (Q Q^T - I) Q) on
adapters pushed off orthonormality (at an orthonormal start the penalty's gradient is 0 and would prove
nothing), with two micro-batches per optimizer step (a penalty added per micro-batch would count twice)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model
from test_resume import StopAt
from transformers import AutoTokenizer, LlamaForCausalLM, TrainerCallback

from adarank import AdaRankCallback, AdaRankTrainer, BudgetConfig, RankAllocator, inject_adapters
from adarank.core.export import export_peft

trl = pytest.importorskip("trl")  # a dev dependency: installed by `make install-dev`, so CI runs these
from trl import SFTConfig, SFTTrainer  # noqa: E402

# ChatML with TRL's {% generation %} markers around the assistant's words (assistant_only_loss needs them)
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}"
    "{{ m['content'] }}<|im_end|>{% endgeneration %}\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CITIES = ["paris", "rome", "madrid", "berlin", "vienna", "lisbon", "oslo", "prague"]
COUNTRIES = ["france", "italy", "spain", "germany", "austria", "portugal", "norway", "czechia"]
ORTH_WEIGHT, STEPS, TARGETS = 0.3, 8, ["q_proj", "v_proj"]


class AdaRankSFTTrainer(AdaRankTrainer, SFTTrainer):
    """The documented route (docs/python-api.md, examples/trl_sft.py)."""


class FirstStepGrads(TrainerCallback):
    """P's and Q's gradients just before the first optimizer step (after clipping and any callback's penalty)."""

    def __init__(self, allocator: RankAllocator) -> None:
        self.allocator, self.grads = allocator, {}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step == 0:
            for name, a in self.allocator.adapters.items():
                self.grads[name] = (a.left_vectors.grad.clone(), a.right_vectors.grad.clone())
            everything = [p.grad for p in kwargs["model"].parameters() if p.grad is not None]
            self.grads["norm"] = torch.linalg.vector_norm(torch.stack([g.norm() for g in everything]))


def _data(kind: str):
    from datasets import Dataset

    if kind == "chat":
        rows = [{"messages": [{"role": "user", "content": f"what is the capital of {country}?"},
                              {"role": "assistant", "content": city}]}
                for city, country in zip(CITIES, COUNTRIES, strict=True)]  # fmt: skip
    else:
        rows = [{"prompt": f"the capital of {country} is", "completion": f" {city}"}
                for city, country in zip(CITIES, COUNTRIES, strict=True)]  # fmt: skip
    return Dataset.from_list(rows * 4)


def _setup(tmp_path: Path):
    folder = tmp_path / "llama"
    if not folder.exists():
        save_tiny_model(folder, llama=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = TEMPLATE
    model = LlamaForCausalLM.from_pretrained(folder)
    adapters = inject_adapters(model, TARGETS, rank=3, alpha=6.0, seed=0)
    with torch.no_grad():  # off orthonormality, so the penalty has a gradient
        for i, adapter in enumerate(adapters.values()):
            adapter.left_vectors.mul_(1.5 + 0.1 * i)
            adapter.right_vectors.mul_(0.7)
    budget = BudgetConfig(init_rank=3, target_rank=1, t_init=2, t_final=3, mask_interval=1)
    return folder, tokenizer, model, RankAllocator(adapters, budget)


def _global_rule_scales_like_the_patterns(folder: Path) -> None:
    """A server that reads only the global r and lora_alpha (vLLM's loader) scales every module by
    lora_alpha / r; PEFT's per-module rule by alpha_pattern / rank_pattern: both give 1 to every module."""
    import json

    config = json.loads((folder / "adapter_config.json").read_text())
    per_module = {config["alpha_pattern"][k] / r for k, r in config["rank_pattern"].items()}
    assert config["lora_alpha"] / config["r"] == 1.0 and per_module == {1.0}
    assert set(config["rank_pattern"]) == set(config["alpha_pattern"])


def _hand_penalty_grads(allocator: RankAllocator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    grads = {}
    for name, a in allocator.adapters.items():
        p, q = a.left_vectors.detach(), a.right_vectors.detach()
        eye = torch.eye(p.shape[1])
        grads[name] = (ORTH_WEIGHT * 4 * p @ (p.T @ p - eye), ORTH_WEIGHT * 4 * (q @ q.T - eye) @ q)
    return grads


def _config(out: Path, kind: str, max_grad_norm: float, save_steps: int | None = None) -> SFTConfig:
    return SFTConfig(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=2e-2, max_grad_norm=max_grad_norm, use_cpu=True, report_to=[],
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        logging_steps=1, seed=0, data_seed=0, assistant_only_loss=kind == "chat", max_length=64,
        dataloader_num_workers=0,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["chat", "prompt_completion"])
def test_sft_trainer_with_adarank_mixed_in_gets_the_whole_method(kind: str, tmp_path: Path) -> None:
    from peft import PeftModel

    folder, tokenizer, model, allocator = _setup(tmp_path)
    expected = _hand_penalty_grads(allocator)
    grads = FirstStepGrads(allocator)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the documented route warns about nothing of adarank's
        warnings.filterwarnings("ignore", message="(?!AdaRank)")
        trainer = AdaRankSFTTrainer(
            model=model, args=_config(tmp_path / "out", kind, max_grad_norm=0.0), train_dataset=_data(kind),
            processing_class=tokenizer, callbacks=[AdaRankCallback(allocator), grads], orth_weight=ORTH_WEIGHT,
        )  # fmt: skip
        trainer.train()
    for name, (p_grad, q_grad) in expected.items():  # no clipping (max_grad_norm=0): exactly the penalty's, once
        torch.testing.assert_close(grads.grads[name][0], p_grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(grads.grads[name][1], q_grad, rtol=1e-5, atol=1e-7)
    lambdas = {id(a.singular_values) for a in allocator.adapters.values()}
    group_lrs = {any(id(p) in lambdas for p in g["params"]): g["initial_lr"] for g in trainer.optimizer.param_groups}
    assert group_lrs == {True: 2e-2 * 10, False: 2e-2}, "lambda's group has the 10x learning-rate multiplier"
    assert sum(allocator.ranks().values()) == 1 * 4 and allocator.finalized, "allocation ends at the target"
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == STEPS and losses[-1] < losses[0], "it trains: the loss falls"
    assert all("orth_penalty" in e for e in trainer.state.log_history if "loss" in e)
    # the export loads in peft alone and gives the trained model's logits
    export_peft(model, tmp_path / "peft")
    _global_rule_scales_like_the_patterns(tmp_path / "peft")
    ids = tokenizer(["the capital of france is paris"], return_tensors="pt")
    model.eval()
    with torch.no_grad():  # the class's forward: the trained model's own is wrapped in TRL's default bf16 autocast
        trained = type(model).forward(model, **ids).logits
        loaded = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(folder), tmp_path / "peft").eval()
        torch.testing.assert_close(loaded(**ids).logits, trained, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_sft_trainer_with_the_callback_alone_applies_the_penalty_after_clipping_and_warns(tmp_path: Path) -> None:
    folder, tokenizer, model, allocator = _setup(tmp_path)
    expected = _hand_penalty_grads(allocator)
    grads = FirstStepGrads(allocator)
    trainer = SFTTrainer(
        model=model, args=_config(tmp_path / "out", "chat", max_grad_norm=1e-4), train_dataset=_data("chat"),
        processing_class=tokenizer, callbacks=[AdaRankCallback(allocator, orth_weight=ORTH_WEIGHT), grads],
    )  # fmt: skip
    with pytest.warns(UserWarning, match="AdaRankCallback without AdaRankTrainer: the callback applies the orth"):
        trainer.train()
    # clipped to 1e-4 (lambda's and the head's gradients), then the penalty's added whole: it is not clipped
    for name, (p_grad, q_grad) in expected.items():
        torch.testing.assert_close(grads.grads[name][0], p_grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(grads.grads[name][1], q_grad, rtol=1e-5, atol=1e-7)
    assert grads.grads["norm"] > 1e-2, "the penalty's gradient is far above the clipping norm"
    assert sum(allocator.ranks().values()) == 4 and allocator.finalized


@pytest.mark.slow
def test_mixed_in_penalty_is_clipped_with_the_task_gradient(tmp_path: Path) -> None:
    _, tokenizer, model, allocator = _setup(tmp_path)
    grads = FirstStepGrads(allocator)
    trainer = AdaRankSFTTrainer(
        model=model, args=_config(tmp_path / "out", "chat", max_grad_norm=1e-4), train_dataset=_data("chat"),
        processing_class=tokenizer, callbacks=[AdaRankCallback(allocator), grads], orth_weight=ORTH_WEIGHT,
    )  # fmt: skip
    trainer.train()
    assert grads.grads["norm"] <= 1e-4 * (1 + 1e-4), "in the loss, the penalty is clipped with everything else"


@pytest.mark.slow
def test_the_trl_example_runs_as_documented(tmp_path: Path) -> None:
    """examples/trl_sft.py as a user runs it (subprocess), on a tiny Llama folder: trains, allocates, exports."""
    import json
    import os
    import subprocess
    import sys

    save_tiny_model(tmp_path / "llama", llama=True)
    script = Path(__file__).resolve().parents[2] / "examples" / "trl_sft.py"
    done = subprocess.run(
        [sys.executable, str(script), "--model", str(tmp_path / "llama"), "--steps", "8", "--max-train", "64",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "final ranks: total 16 over 8 modules (target 2 each)" in done.stdout
    config = json.loads((tmp_path / "out" / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and sum(config["rank_pattern"].values()) == 16


class AdaRankDPOTrainer(AdaRankTrainer, trl.DPOTrainer):
    """The second host trainer: TRL's DPOTrainer (its own loss over chosen and rejected completions)."""


@pytest.mark.slow
def test_dpo_trainer_with_adarank_mixed_in_gets_the_whole_method(tmp_path: Path) -> None:
    from datasets import Dataset
    from peft import PeftModel

    folder, tokenizer, model, allocator = _setup(tmp_path)
    expected = _hand_penalty_grads(allocator)
    grads = FirstStepGrads(allocator)
    pairs = [{"prompt": f"the capital of {country} is", "chosen": f" {city}", "rejected": f" {CITIES[i - 1]}"}
             for i, (city, country) in enumerate(zip(CITIES, COUNTRIES, strict=True))]  # fmt: skip
    config = trl.DPOConfig(
        output_dir=str(tmp_path / "out"), max_steps=STEPS, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=2e-2, max_grad_norm=0.0, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
        seed=0, data_seed=0, max_length=64, dataloader_num_workers=0, beta=0.1,
    )  # fmt: skip
    trainer = AdaRankDPOTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(pairs * 4), processing_class=tokenizer,
        callbacks=[AdaRankCallback(allocator), grads], orth_weight=ORTH_WEIGHT,
    )  # fmt: skip
    trainer.train()
    for name, (p_grad, q_grad) in expected.items():  # DPO's loss is per micro-batch: the penalty still counts once
        torch.testing.assert_close(grads.grads[name][0], p_grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(grads.grads[name][1], q_grad, rtol=1e-5, atol=1e-7)
    lambdas = {id(a.singular_values) for a in allocator.adapters.values()}
    group_lrs = {any(id(p) in lambdas for p in g["params"]): g["initial_lr"] for g in trainer.optimizer.param_groups}
    assert group_lrs == {True: 2e-2 * 10, False: 2e-2}
    assert sum(allocator.ranks().values()) == 4 and allocator.finalized
    margins = [e["rewards/margins"] for e in trainer.state.log_history if "rewards/margins" in e]
    assert len(margins) == STEPS and margins[0] == 0.0, "DPO's own metrics; at step 1 the policy is the reference"
    assert all(bool((a.singular_values != 0).any()) for a in allocator.adapters.values()), "DPO's loss moved lambda"
    export_peft(model, tmp_path / "peft")
    ids = tokenizer(["the capital of france is paris"], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        trained = type(model).forward(model, **ids).logits
        loaded = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(folder), tmp_path / "peft").eval()
        torch.testing.assert_close(loaded(**ids).logits, trained, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_sft_trainer_with_adarank_mixed_in_resumes_exactly(tmp_path: Path) -> None:
    """Stopped after step 4 of 8 (mid-decay, checkpoint with the allocator's state) and resumed in a new
    trainer: the same masks and the same adapters as the run that never stopped, bit for bit."""

    def run(out: Path, stop: int | None = None, resume: bool = False) -> tuple[dict, dict]:
        _, tokenizer, model, allocator = _setup(tmp_path)
        callbacks = [AdaRankCallback(allocator)] + ([StopAt(stop)] if stop else [])
        trainer = AdaRankSFTTrainer(
            model=model, args=_config(out, "chat", max_grad_norm=1.0, save_steps=4), train_dataset=_data("chat"),
            processing_class=tokenizer, callbacks=callbacks, orth_weight=ORTH_WEIGHT,
        )  # fmt: skip
        trainer.train(resume_from_checkpoint=True if resume else None)
        state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return allocator.ranks(), state

    ranks, weights = run(tmp_path / "whole")
    with pytest.raises(RuntimeError, match="rank allocation did not finish: 4 of 8 steps"):  # stopped: it says so
        run(tmp_path / "parts", stop=4)
    assert (tmp_path / "parts" / "checkpoint-4").is_dir()
    resumed_ranks, resumed = run(tmp_path / "parts", resume=True)
    assert resumed_ranks == ranks and sum(ranks.values()) == 4
    assert resumed.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(resumed[name], tensor), name
