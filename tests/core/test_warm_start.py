"""The gradient warm start (adapter.init=gradient): exact gradients of the frozen weights, P and Q on
their top singular directions, the model unchanged, and the option from the command line."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert, tiny_config
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

from adarank.checks import load_config
from adarank.cli import main
from adarank.config import ConfigError
from adarank.core.inject import inject_adapters
from adarank.core.layers import SVDLinear
from adarank.core.warm_start import align_to_gradients_, warm_start_, weight_gradients


def _model(kind: str) -> nn.Module:
    """A tiny BERT classifier (Linear), GPT-2 LM (Conv1D) or Llama LM (GQA), dropout off."""
    torch.manual_seed(0)
    if kind == "bert":
        return tiny_bert()
    if kind == "gpt2":
        config = GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
        return GPT2LMHeadModel(config)
    return LlamaForCausalLM(tiny_config(True, vocab_size=100, max_position_embeddings=32, num_key_value_heads=1))


def _batches(kind: str, count: int = 2) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        ids = torch.randint(0, 100, (4, 10), generator=generator)
        labels = torch.randint(0, 2, (4,), generator=generator) if kind == "bert" else ids.clone()
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return batches


def _targets(kind: str) -> list[str]:
    return {"bert": ["query", "value", "intermediate.dense"], "gpt2": ["c_attn", "c_fc"], "llama": ["all-linear"]}[kind]


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_hook_gradients_equal_autograd_of_the_frozen_weight(kind) -> None:
    """G from the hooks (g_out^T x, summed over two batches) is W0's own autograd gradient, in Linear
    layout for GPT-2's Conv1D too; nothing keeps a gradient afterwards."""
    model = _model(kind)
    adapters = inject_adapters(model, _targets(kind), rank=2, alpha=4)
    batches = _batches(kind)
    gradients = weight_gradients(model, adapters, batches)
    assert all(p.grad is None for p in model.parameters())
    for adapter in adapters.values():
        adapter.base.weight.requires_grad_(True)
    for batch in batches:
        model(**batch).loss.backward()
    for name, adapter in adapters.items():
        reference = adapter.base.weight.grad
        assert reference is not None and reference.abs().max() > 0
        if isinstance(adapter.base, Conv1D):
            reference = reference.T
        torch.testing.assert_close(gradients[name], reference, atol=1e-6, rtol=1e-5)


def test_warm_start_puts_each_triplet_on_a_steepest_direction() -> None:
    """After the warm start the model computes exactly what it did (lambda = 0), P and Q are orthonormal,
    and lambda_i's gradient on the same batches is s sigma_i: the top singular values of W0's gradient."""
    model = _model("llama")
    adapters = inject_adapters(model, ["all-linear"], rank=3, alpha=6)
    batches = _batches("llama")
    with torch.no_grad():
        before = model(**batches[0]).logits
    gradients = weight_gradients(model, adapters, batches)
    warm_start_(model, adapters, batches)
    with torch.no_grad():
        assert torch.equal(model(**batches[0]).logits, before)
    assert all(p.grad is None for p in model.parameters())
    for batch in batches:
        model(**batch).loss.backward()
    eye = torch.eye(3)
    for name, adapter in adapters.items():
        torch.testing.assert_close(adapter.left_vectors.T @ adapter.left_vectors, eye, atol=1e-5, rtol=0)
        torch.testing.assert_close(adapter.right_vectors @ adapter.right_vectors.T, eye, atol=1e-5, rtol=0)
        sigma = torch.linalg.svdvals(gradients[name].double())[:3].float()
        assert adapter.singular_values.grad is not None
        torch.testing.assert_close(adapter.singular_values.grad, adapter.scaling * sigma, atol=1e-5, rtol=1e-4)
        assert adapter.left_vectors.grad is not None and adapter.left_vectors.grad.abs().max() == 0  # lambda = 0


def test_rank_above_the_gradient_rank_and_no_batches_are_refused() -> None:
    torch.manual_seed(0)
    adapter = SVDLinear(nn.Linear(4, 3), rank=4, alpha=4)  # rank 4 > min(3, 4)
    with pytest.raises(ValueError, match=r"layer: rank 4 exceeds min\(d_out, d_in\) = 3"):
        align_to_gradients_({"layer": adapter}, {"layer": torch.randn(3, 4)})
    model = _model("bert")
    adapters = inject_adapters(model, ["query"], rank=2, alpha=4)
    with pytest.raises(ValueError, match="at least one batch"):
        weight_gradients(model, adapters, [])
    assert all(p.grad is None for p in model.parameters())


def test_bad_init_options_are_reported_together(tmp_path, monkeypatch) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["adapter.init=svd", "adapter.init_batches=0"])
    assert "adapter.init `svd` is not one of orthonormal, gradient." in err.value.problems
    assert "adapter.init_batches (0) must be >= 1." in err.value.problems
    monkeypatch.setenv("WORLD_SIZE", "2")  # the warm start runs in every strategy, FSDP2 included
    assert load_config(None, ["adapter.init=gradient", "distributed.strategy=fsdp2"]).adapter.init == "gradient"


def _autograd_gradients(model: nn.Module, adapters: dict[str, SVDLinear], batches: list) -> dict[str, torch.Tensor]:
    """Each adapted base weight's gradient of the model's loss summed over ``batches``, by autograd on W0 itself
    (lambda = 0, so the model is the base); leaves no gradient and the weights frozen again."""
    for adapter in adapters.values():
        adapter.base.weight.requires_grad_(True)
    model.train()
    for batch in batches:
        model(**batch).loss.backward()
    gradients = {name: adapter.base.weight.grad.detach().clone() for name, adapter in adapters.items()}
    for adapter in adapters.values():
        adapter.base.weight.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    return gradients


def test_warm_start_from_the_command_line(tmp_path, capsys, monkeypatch) -> None:
    """`adarank train adapter.init=gradient` on the default model: before training, on 3 batches of 8 training
    rows, every adapter's P diag(sigma) Q is the best rank-12 approximation of its weight's task gradient over
    them (computed here by autograd on the frozen weights, with the same dropout draws); the run finishes with
    the option in its config and metrics consistent with the rows evaluated (12 steps learn nothing to test)."""
    from test_cli import _check_run_dir

    import adarank.run

    seen: dict = {}

    def checked_warm_start(model, adapters, batches):  # noqa: ANN001, ANN202
        batches = list(batches)
        before = torch.get_rng_state()
        warm_start_(model, adapters, batches)
        after = torch.get_rng_state()
        torch.set_rng_state(before)  # the same dropout masks as the warm start's passes
        seen["gradients"] = _autograd_gradients(model, adapters, batches)
        torch.set_rng_state(after)
        seen["factors"] = {n: (a.left_vectors.detach().clone(), a.right_vectors.detach().clone()) for n, a in
                           adapters.items()}  # fmt: skip
        seen["rows"] = [len(batch["input_ids"]) for batch in batches]
        seen["lambda"] = [float(a.singular_values.detach().abs().max()) for a in adapters.values()]

    monkeypatch.setattr(adarank.run, "warm_start_", checked_warm_start)
    out = tmp_path / "run"
    short = ["train.max_steps=12", "data.max_train_samples=96", "data.max_eval_samples=32", "wandb.mode=disabled"]
    code = main(["train", f"output_dir={out}", *short, "train.batch_size=8", "adapter.init=gradient",
                 "adapter.init_batches=3"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "adarank: warm start: P and Q of 24 adapters from the gradient of 3 batch(es) of 8" in printed
    assert seen["rows"] == [8, 8, 8] and max(seen["lambda"]) == 0 and len(seen["factors"]) == 24
    eye = torch.eye(12, dtype=torch.float64)
    for name, (left, right) in seen["factors"].items():
        u, sigma, vh = torch.linalg.svd(seen["gradients"][name].double(), full_matrices=False)
        best = u[:, :12] @ torch.diag(sigma[:12]) @ vh[:12]  # sigma_12 > sigma_13 here (by 0.6% at least)
        left, right = left.double(), right.double()
        torch.testing.assert_close(left.T @ left, eye, atol=1e-5, rtol=0)
        torch.testing.assert_close(right @ right.T, eye, atol=1e-5, rtol=0)
        error = (left @ torch.diag(sigma[:12]) @ right - best).norm() / best.norm()
        assert error < 1e-4, (name, float(error))  # about 1e-6: float32 sums in another order
    assert load_config(out / "config.yaml", ["overwrite=true"]).adapter.init == "gradient"
    _check_run_dir(out, 12)


def test_a_rank_above_a_module_width_is_refused_before_training(tmp_path) -> None:
    """`adarank train adapter.init=gradient` with init_rank above MiniLM's width (384): a config error,
    named with its fix, before anything is written."""
    out = tmp_path / "run"
    code = main(["train", f"output_dir={out}", "train.max_steps=12", "data.max_train_samples=96", "wandb.mode=disabled",
                 "adapter.init=gradient", "budget.init_rank=400", "budget.target_rank=8"])  # fmt: skip
    assert code == 2 and not out.exists()
