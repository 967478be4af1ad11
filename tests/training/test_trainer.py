"""Trainer integration: exact regularizer weighting under accumulation, allocation in a real run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_bert, tiny_config
from transformers import (
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    TrainerCallback,
    TrainingArguments,
)

from adarank import AdaRankCallback, AdaRankTrainer, BudgetConfig, RankAllocator, inject_adapters
from adarank.core.regularization import orthogonality_penalty


def _dataset(n: int = 64, seq: int = 12, vocab: int = 100, seed: int = 0, causal: bool = False) -> list[dict]:
    """Random token rows labelled by a parity rule; ``causal``: next-token labels with a varying
    number of answer tokens per row (so per-micro-batch means and the token-count mean differ)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(3, vocab, (seq,), generator=gen)
        label: object = int(ids[:4].sum() % 2)
        if causal:
            label = ids.clone()
            label[: 2 + i % 7] = -100
        rows.append({"input_ids": ids, "attention_mask": torch.ones(seq, dtype=torch.long), "labels": label})
    return rows


def _tiny_llama() -> LlamaForSequenceClassification:
    torch.manual_seed(0)
    config = tiny_config(True, vocab_size=100, num_key_value_heads=2, max_position_embeddings=64, num_labels=2,
                         pad_token_id=0)  # fmt: skip
    return LlamaForSequenceClassification(config)


def _tiny_causal_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config(True, vocab_size=100, num_key_value_heads=2, max_position_embeddings=64))


class _NoLossKwargs(torch.nn.Module):
    """A classifier whose forward takes no **kwargs: the Trainer divides its loss by accumulation itself."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_bert()

    def forward(self, input_ids, attention_mask, labels):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def _args(tmp_path: Path, **kwargs) -> TrainingArguments:
    base = dict(
        output_dir=str(tmp_path),
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        seed=0,
        disable_tqdm=True,
        max_grad_norm=0.0,
    )
    base.update(kwargs)
    return TrainingArguments(**base)


class _GradCapture(TrainerCallback):
    def __init__(self, adapters) -> None:
        self.adapters = adapters
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, **kwargs) -> None:
        if not self.grads:
            for name, adapter in self.adapters.items():
                self.grads[name + ".P"] = adapter.left_vectors.grad.clone()
                self.grads[name + ".Q"] = adapter.right_vectors.grad.clone()


def _off_orthonormal_adapters(model: torch.nn.Module) -> dict:
    """Rank-4 adapters on every linear, P and Q moved off orthonormality so the penalty has a gradient."""
    adapters = inject_adapters(model, ["all-linear"], rank=4, alpha=8, seed=0, modules_to_save=[])
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.left_vectors.mul_(1.3)
            adapter.right_vectors.add_(0.05)
    return adapters


# Whether the Trainer treats each model's loss as normalized by the item count (then it does not divide
# by the accumulation steps, and AdaRankTrainer must divide the penalty itself): only the causal LM.
NORMALIZES_ITEMS = {tiny_bert: False, _tiny_llama: False, _NoLossKwargs: False, _tiny_causal_llama: True}


@pytest.mark.filterwarnings("ignore:AdaRankTrainer has no AdaRankCallback")
@pytest.mark.parametrize(
    "make_model",
    list(NORMALIZES_ITEMS),
    ids=["bert", "llama", "no-kwargs", "llama-causal-lm"],
)
@pytest.mark.parametrize("batch,accum", [(32, 1), (8, 4)])
def test_regularizer_gradient_exact_under_accumulation(tmp_path, make_model, batch, accum) -> None:
    model = make_model()
    adapters = _off_orthonormal_adapters(model)
    expected_penalty = orthogonality_penalty(adapters.values())
    expected = torch.autograd.grad(
        expected_penalty, [p for a in adapters.values() for p in (a.left_vectors, a.right_vectors)]
    )
    capture = _GradCapture(adapters)
    trainer = AdaRankTrainer(
        model=model,
        args=_args(tmp_path, max_steps=1, per_device_train_batch_size=batch, gradient_accumulation_steps=accum),
        train_dataset=_dataset(32, causal=make_model is _tiny_causal_llama),
        callbacks=[capture],
        orth_weight=0.25,
    )
    # the causal LM takes the branch where the penalty is divided by the accumulation steps here
    assert trainer.model_accepts_loss_kwargs is NORMALIZES_ITEMS[make_model]
    trainer.train()
    # lambda = 0 at init, so the task loss gives P and Q no gradient: theirs is the penalty's alone.
    for got, want in zip(capture.grads.values(), expected, strict=True):
        torch.testing.assert_close(got, 0.25 * want, atol=1e-6, rtol=1e-5)


def test_allocation_changes_ranks_in_trainer_run(tmp_path) -> None:
    model = tiny_bert()
    adapters = inject_adapters(model, ["all-linear"], rank=4, alpha=8, seed=0, modules_to_save=["classifier"])
    budget = BudgetConfig(init_rank=4, target_rank=2, t_init=4, t_final=8, mask_interval=2)
    allocator = RankAllocator(adapters, budget)
    trainer = AdaRankTrainer(
        model=model,
        args=_args(tmp_path, max_steps=24, per_device_train_batch_size=8, learning_rate=5e-3),
        train_dataset=_dataset(64),
        callbacks=[AdaRankCallback(allocator)],
        singular_lr_multiplier=10,
    )
    trainer.train()
    ranks = allocator.ranks()
    assert allocator.plan.total_steps == 24  # taken from the Trainer
    assert sum(ranks.values()) == 24 == allocator.plan.target_budget
    assert len(set(ranks.values())) > 1, f"allocation left a uniform pattern: {ranks}"
    assert allocator.last_event["final"] and allocator.last_event["step"] == 16


def test_lora_mode_keeps_every_rank(tmp_path) -> None:
    model = tiny_bert()
    adapters = inject_adapters(model, ["query", "value"], rank=3, alpha=3, seed=0, modules_to_save=["classifier"])
    allocator = RankAllocator(adapters, BudgetConfig(schedule="constant", init_rank=3, target_rank=3))
    trainer = AdaRankTrainer(
        model=model,
        args=_args(tmp_path, max_steps=6, per_device_train_batch_size=8),
        train_dataset=_dataset(48),
        callbacks=[AdaRankCallback(allocator)],
    )
    trainer.train()
    assert allocator.ranks() == dict.fromkeys(adapters, 3)
    assert allocator.scores == {} and allocator.last_step == 6
    assert all(torch.count_nonzero(a.singular_values) == 3 for a in adapters.values())


def test_callback_refuses_adapters_of_another_model(tmp_path) -> None:
    other = tiny_bert()
    allocator = RankAllocator(
        inject_adapters(other, ["query"], rank=2, alpha=2),
        BudgetConfig(init_rank=2, target_rank=1, t_init=1, t_final=1),
    )
    model = tiny_bert()
    inject_adapters(model, ["query"], rank=2, alpha=2)
    trainer = AdaRankTrainer(
        model=model,
        args=_args(tmp_path, max_steps=4, per_device_train_batch_size=8),
        train_dataset=_dataset(32),
        callbacks=[AdaRankCallback(allocator)],
    )
    with pytest.raises(RuntimeError, match="adapters are not in the model this Trainer trains"):
        trainer.train()


def test_trainer_without_callback_warns(tmp_path) -> None:
    model = tiny_bert()
    inject_adapters(model, ["query"], rank=2, alpha=2)
    with pytest.warns(UserWarning, match="has no AdaRankCallback: ranks will never be allocated"):
        AdaRankTrainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=_dataset(8))


class _AllGrads(TrainerCallback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs) -> None:
        if not self.grads:
            self.grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.filterwarnings("ignore:AdaRankTrainer has no AdaRankCallback")
@pytest.mark.parametrize(
    "make_model", [tiny_bert, _tiny_llama, _tiny_causal_llama], ids=["bert", "llama", "llama-causal-lm"]
)
def test_whole_gradient_under_accumulation_equals_full_batch(tmp_path, make_model) -> None:
    """Task loss + penalty: batch 8 x accumulation 4 gives the gradient of batch 32. BERT's classifier
    takes **kwargs but returns a batch mean; without AdaRankTrainer's correction transformers 5.x
    would sum the 4 micro-batch means (4x the task gradient)."""
    grads = []
    for batch, accum in ((32, 1), (8, 4)):
        model = make_model()
        head = {tiny_bert: ["classifier"], _tiny_llama: ["score"]}.get(make_model, [])
        adapters = inject_adapters(model, ["all-linear"], rank=4, alpha=8, seed=0, modules_to_save=head)
        with torch.no_grad():
            for adapter in adapters.values():
                adapter.singular_values.fill_(0.5)  # so the task loss reaches P and Q too
                adapter.left_vectors.mul_(1.3)
        capture = _AllGrads()
        trainer = AdaRankTrainer(
            model=model,
            args=_args(
                tmp_path / f"{batch}", max_steps=1, per_device_train_batch_size=batch, gradient_accumulation_steps=accum
            ),
            train_dataset=_dataset(32, causal=make_model is _tiny_causal_llama),
            callbacks=[capture],
            orth_weight=0.25,
        )
        assert trainer.model_accepts_loss_kwargs == (make_model is _tiny_causal_llama)
        trainer.train()
        grads.append(capture.grads)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) >= 36  # >= 12 adapters x (P, lambda, Q)
    for name, full in grads[0].items():
        torch.testing.assert_close(grads[1][name], full, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.filterwarnings("ignore:AdaRankTrainer has no AdaRankCallback")
def test_trainer_runs_a_causal_lms_head_on_the_scored_positions_only(tmp_path) -> None:
    """A generation batch scores a few tokens per row: the head (a fifth of SmolLM2's cost) sees those
    rows alone, in batches of 8 x 2 accumulation, and the loss the Trainer logs is the model's own."""
    model = _tiny_causal_llama()
    inject_adapters(model, ["q_proj", "v_proj"], rank=2, alpha=4, seed=0, modules_to_save=[])
    head_shapes: list[tuple[int, ...]] = []
    model.lm_head.register_forward_hook(lambda _m, inputs, _o: head_shapes.append(tuple(inputs[0].shape[:-1])))
    rows = _dataset(32, causal=True)
    trainer = AdaRankTrainer(
        model=model,
        args=_args(tmp_path, max_steps=2, per_device_train_batch_size=8, gradient_accumulation_steps=2),
        train_dataset=rows,
        orth_weight=0.0,
    )
    trainer.train()
    scored = [int((r["labels"][1:] != -100).sum()) for r in rows]
    assert sum(scored) == 230 and max(scored) == 10
    # 4 micro-batches of 8 rows; the head runs on each row's scored positions (padded to the micro-batch's
    # most, found on the host by the loader's collator), not on all 12
    assert len(head_shapes) == 4 and all(b == 8 and k <= max(scored) for b, k in head_shapes), head_shapes
    assert sum(b * k for b, k in head_shapes) >= sum(scored)


@pytest.mark.filterwarnings("ignore:AdaRankTrainer has no AdaRankCallback")
def test_trainer_keeps_every_logit_for_a_label_smoother(tmp_path) -> None:
    """Label smoothing reads the logits of every position: there the head must see the whole batch
    (8 rows x 12 positions each micro-batch), not the scored positions alone."""
    model = _tiny_causal_llama()
    inject_adapters(model, ["q_proj", "v_proj"], rank=2, alpha=4, seed=0, modules_to_save=[])
    head_rows: list[int] = []
    model.lm_head.register_forward_hook(lambda _m, inputs, _o: head_rows.append(int(inputs[0].shape[:-1].numel())))
    trainer = AdaRankTrainer(
        model=model,
        args=_args(tmp_path, max_steps=1, per_device_train_batch_size=8, label_smoothing_factor=0.1),
        train_dataset=_dataset(8, causal=True),
        orth_weight=0.0,
    )
    trainer.train()
    assert trainer.label_smoother is not None and head_rows == [8 * 12]


class _FirstScores(TrainerCallback):
    """The allocator's score EMAs right after step 1's update (runs after AdaRankCallback's hook)."""

    def __init__(self, allocator: RankAllocator) -> None:
        self.allocator = allocator
        self.scores: dict[str, torch.Tensor] = {}

    def on_optimizer_step(self, args, state, control, **kwargs) -> None:
        if state.global_step == 0:
            self.scores = {f"{n}.{k}": v.clone() for n, s in self.allocator.scores.items() for k, v in s.items()}


@pytest.mark.parametrize("make_model", [tiny_bert, _tiny_causal_llama], ids=["bert", "llama-causal-lm"])
@pytest.mark.parametrize("batch,accum", [(32, 1), (8, 4)])
def test_task_only_scores_leave_the_penalty_gradient_out(tmp_path, make_model, batch, accum) -> None:
    """lambda = 0 at step 1, so the task gives P and Q no gradient: their whole gradient is the penalty's,
    accumulated over micro-batches and clipped (max_grad_norm 1e-3 clips it). With importance.task_only
    their sensitivity must be 0 (up to rounding); with the paper's scores it is not."""
    from adarank.config import ImportanceConfig

    sensitivities = {}
    for task_only in (False, True):
        model = make_model()
        adapters = _off_orthonormal_adapters(model)
        budget = BudgetConfig(init_rank=4, target_rank=2, t_init=2, t_final=2, mask_interval=1)
        allocator = RankAllocator(adapters, budget, ImportanceConfig(task_only=task_only))
        first = _FirstScores(allocator)
        args = _args(tmp_path, max_steps=6, per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                     max_grad_norm=1e-3)  # fmt: skip
        data = _dataset(32 * 6, causal=make_model is _tiny_causal_llama)
        callbacks = [AdaRankCallback(allocator), first]
        trainer = AdaRankTrainer(model=model, args=args, train_dataset=data, callbacks=callbacks, orth_weight=0.25)
        trainer.train()
        assert allocator.penalty_grads == {}  # used and cleared every step
        parts = ("left_vectors.sensitivity", "right_vectors.sensitivity")
        sensitivities[task_only] = max(float(v.abs().max()) for k, v in first.scores.items() if k.endswith(parts))
        singular = [v for k, v in first.scores.items() if k.endswith("singular_values.sensitivity")]
        assert max(float(v.max()) for v in singular) > 0  # lambda's task gradient is scored either way
    assert sensitivities[False] > 1e-9
    assert sensitivities[True] <= 1e-5 * sensitivities[False]
