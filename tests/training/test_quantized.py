"""A quantized frozen base (model.quantization=int8 | nf4, torchao) through `adarank train`: a tiny Llama
classifier trains with its blocks' linears quantized, resumes bit for bit after a SIGKILL, and exports
(native, PEFT, merged) that reload with the trained logits; bad set-ups are refused before anything loads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model
from safetensors.torch import load_file
from test_engine import _env, _kill_after_checkpoint, _run

from adarank.cli import main
from adarank.io.quantize import is_quantized, quantize_base_
from adarank.training.checkpoint import ALLOCATOR_STATE

pytest.importorskip("torchao")  # adarank[quant], a dev dependency: CI runs these

TOLERANCE = {"int8": 1e-4, "nf4": 1e-4}
"""Max abs logit difference of a reloaded export from the trained model: the same quantized base and
adapters, in another process (float32 sums in the same order: in practice equal)."""


def _command(out: Path, model: Path, quantization: str) -> list[str]:
    return [sys.executable, "-m", "adarank", "train", f"output_dir={out}", f"model.name_or_path={model}",
            f"model.quantization={quantization}", "adapter.target_modules=all-linear", "train.max_steps=16",
            "train.batch_size=8", "data.max_train_samples=128", "data.max_eval_samples=16", "budget.init_rank=3",
            "budget.target_rank=1", "budget.t_init=2", "budget.t_final=4", "budget.mask_interval=2",
            "train.save_steps=4", "train.learning_rate=5e-3", "wandb.mode=disabled"]  # fmt: skip


def test_only_the_blocks_linears_are_quantized_and_the_gradient_reaches_the_input(tmp_path: Path) -> None:
    from transformers import LlamaForSequenceClassification

    save_tiny_model(tmp_path / "llama", llama=True)
    for quantization in ("int8", "nf4"):
        model = LlamaForSequenceClassification.from_pretrained(tmp_path / "llama", num_labels=2, pad_token_id=0)
        reference = LlamaForSequenceClassification.from_pretrained(tmp_path / "llama", num_labels=2, pad_token_id=0)
        reference.score.load_state_dict(model.score.state_dict())
        mapped = model.model.embed_tokens.weight.data_ptr()
        names = quantize_base_(model, quantization, keep=("score",))
        assert model.model.embed_tokens.weight.data_ptr() != mapped, "plain tensors moved off the checkpoint's map"
        assert len(names) == 14 and all(is_quantized(model.get_submodule(n).weight) for n in names)
        assert not is_quantized(model.score.weight) and not is_quantized(model.model.embed_tokens.weight)
        ids = torch.randint(1000, 2000, (2, 9))
        model.eval()
        with torch.no_grad():  # an eval forward first: bitsandbytes' CPU 4-bit broke the gradient after one
            model(input_ids=ids)
        model.train()
        embeds = model.model.embed_tokens(ids).detach().requires_grad_(True)
        model(inputs_embeds=embeds).logits.sum().backward()
        plain = reference.model.embed_tokens(ids).detach().requires_grad_(True)
        reference(inputs_embeds=plain).logits.sum().backward()
        error = (embeds.grad - plain.grad).norm() / plain.grad.norm()
        assert 0 < error < (0.02 if quantization == "int8" else 0.25), (quantization, error)
        assert all(model.get_submodule(n).weight.grad is None for n in names), "the quantized weights stay frozen"


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_a_quantized_base_trains_resumes_and_exports(quantization: str, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from adarank.core.native import load_adapter
    from adarank.training.setup import load_base

    model = tmp_path / "llama"
    save_tiny_model(model, llama=True)
    env = _env(tmp_path)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run(_command(whole, model, quantization), env)
    metrics = json.loads((whole / "metrics.json").read_text())
    log = json.loads((whole / "train_log.json").read_text())
    losses = [e["loss"] for e in log if "loss" in e]
    assert losses and all(0 < loss < 10 for loss in losses), "finite training losses on the quantized base"
    lambdas = [t for k, t in load_file(whole / "adapter" / "adapter.safetensors").items() if "singular_values" in k]
    assert all(bool((t != 0).all()) for t in lambdas) and len(lambdas) > 0, "the adapters trained"
    assert metrics["total_rank_final"] == metrics["target_total_rank"] == 14
    _kill_after_checkpoint(
        _command(killed, model, quantization), env, killed / "trainer" / "checkpoint-8" / ALLOCATOR_STATE
    )
    _run([sys.executable, "-m", "adarank", "train", f"resume={killed}"], env)
    assert json.loads((killed / "allocation.json").read_text()) == json.loads((whole / "allocation.json").read_text())
    a, b = load_file(whole / "adapter" / "adapter.safetensors"), load_file(killed / "adapter" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed bit for bit"

    # the trained model, rebuilt: the quantized base as recorded + the native adapter
    meta = json.loads((whole / "adapter" / "adarank_adapter.json").read_text())
    assert meta["base_model"]["quantization"] == quantization
    _, trained, _ = load_base(meta["base_model"])
    load_adapter(trained, whole / "adapter")
    ids = torch.randint(1000, 2000, (3, 11))
    with torch.no_grad():
        expected = trained.eval()(input_ids=ids).logits
    for fmt in ("native", "peft", "merged"):
        assert main(["export", str(whole), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    _, again, _ = load_base(meta["base_model"])
    load_adapter(again, tmp_path / "native")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(input_ids=ids).logits, expected, rtol=0, atol=TOLERANCE[quantization])
    # PEFT: its adapter on the same quantized base (the adapter carries no quantization)
    _, base, _ = load_base(meta["base_model"])
    peft_model = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, expected, rtol=0, atol=TOLERANCE[quantization])
    # merged: float32, the dequantized base plus the update, loaded by transformers alone
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=0, atol=TOLERANCE[quantization])


def test_quantization_set_ups_it_cannot_serve_are_refused_before_loading(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["train", f"output_dir={out}", "model.quantization=int4", "wandb.mode=disabled"])
    assert code == 2 and "model.quantization `int4` is not one of none, int8, nf4." in capsys.readouterr().err
    code = main(["train", f"output_dir={out}", "model.quantization=nf4", "adapter.init=gradient",
                 "distributed.strategy=fsdp2", "wandb.mode=disabled"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "model.quantization=nf4 with distributed.strategy=fsdp2: FSDP2 shards plain tensors" in err
    assert "model.quantization=nf4 with adapter.init=gradient: the warm start needs" in err
    assert not out.exists()


@pytest.mark.slow
def test_smollm2_with_an_nf4_base_trains_resumes_and_reloads(tmp_path: Path) -> None:
    """The real SmolLM2-135M (its GGUF dequantized, then NF4): 8 steps of Rotten Tomatoes as generation, killed
    after checkpoint 4 and resumed bit for bit; the native export on a fresh NF4 base gives the trained logits."""
    from adarank.checks import load_config
    from adarank.core.native import load_adapter
    from adarank.data import load_task
    from adarank.data.tasks import build_datasets
    from adarank.training.evaluate import evaluate_splits
    from adarank.training.setup import load_base

    root = Path(__file__).resolve().parents[2]
    env = _env(tmp_path)

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "adarank", "train", str(root / "configs" / "rt-smollm2-adalora.yaml"),
                f"output_dir={out}", "model.quantization=nf4", "train.max_steps=8", "train.batch_size=4",
                "data.max_train_samples=32", "data.max_eval_samples=8", "budget.t_init=1", "budget.t_final=2",
                "budget.mask_interval=1", "train.save_steps=4", "train.evaluate_before=false",
                "wandb.mode=disabled"]  # fmt: skip

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run(command(whole), env)
    _kill_after_checkpoint(command(killed), env, killed / "trainer" / "checkpoint-4" / ALLOCATOR_STATE)
    _run([sys.executable, "-m", "adarank", "train", f"resume={killed}"], env)
    a, b = load_file(whole / "adapter" / "adapter.safetensors"), load_file(killed / "adapter" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed bit for bit"
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["total_rank_final"] == metrics["target_total_rank"] == 4 * 120
    # the native export on a fresh NF4 base scores the validation rows as the trained model did
    meta = json.loads((whole / "adapter" / "adarank_adapter.json").read_text())
    tokenizer, model, _ = load_base(meta["base_model"])
    load_adapter(model, whole / "adapter")
    cfg = load_config(whole / "config.yaml", [f"output_dir={whole}", "overwrite=true"])
    task = load_task(cfg.data)
    scores = evaluate_splits(model.eval(), None, tokenizer, cfg, task, build_datasets(tokenizer, cfg, task),
                             ("validation",))  # fmt: skip
    assert scores["validation_answer_loss"] == pytest.approx(metrics["validation_answer_loss"], abs=1e-5)


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_a_percentage_budget_counts_the_same_logical_sizes_in_plan_and_train(quantization: str, tmp_path: Path) -> None:
    from adarank.checks import load_config
    from adarank.training.setup import describe, prepare

    save_tiny_model(tmp_path / "llama", llama=True)
    cfg = load_config(None, [f"model.name_or_path={tmp_path / 'llama'}", f"model.quantization={quantization}",
                             "adapter.target_modules=all-linear", "budget.target_params=0.3%", "budget.init_rank=4",
                             "wandb.mode=disabled"])  # fmt: skip
    _, planned = describe(cfg)
    _, model, allocator = prepare(cfg)
    assert any(is_quantized(p) for p in model.parameters()), "the base is quantized in train"
    trained = allocator.set_total_steps(cfg.train.max_steps)
    assert trained.target_budget == planned.target_budget > 0
    assert allocator.base_params == sum(p.numel() for p in _skeleton(cfg).parameters())


def _skeleton(cfg):
    from adarank.io.models import model_skeleton

    return model_skeleton(cfg.model, False, 2)
