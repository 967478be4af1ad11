"""studies/planted_rank.py, the benchmark with a known answer: low-rank updates planted in a few
modules of the real MiniLM; adarank's AdaLoRA, at a final budget equal to the planted one, must put
its rank where the plants are. A change that breaks scoring or allocation fails here.

The thresholds were fixed before this fast setting (100 steps) was ever run (commit of this file):
recall >= 0.75 (the 200-step prototype found 12 of 13 planted triplets, 0.923, on this seed) and a
residual <= 0.25 of the base's (the student learned most of the teacher's change)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import planted_rank  # noqa: E402
from planted_rank import (  # noqa: E402
    Setup,
    base_model,
    batches,
    matching_loss,
    module_recall,
    plant,
    run,
    student_ranks,
    teacher_states,
    with_options,
)

from adarank.core.inject import module_shapes

FAST = Setup(model="minilm", steps=100)
RECALL_AT_LEAST = 0.75
RESIDUAL_AT_MOST = 0.25


def test_random_allocation_falls_below_the_threshold() -> None:
    """The negative control: the planted ranks put on random modules (no training needed to score it)
    recall far less than the threshold, so passing it means the allocator found the plants."""
    _, base = base_model(FAST, 0)
    planted = plant(base, FAST, 0)
    shapes = module_shapes(base, ["all-linear"])
    assert sum(planted.values()) == 13 and len(planted) == 4
    assert module_recall(student_ranks("random", FAST, planted, shapes, 0), planted) < RECALL_AT_LEAST / 2


@pytest.mark.slow
def test_adalora_finds_the_planted_ranks() -> None:
    result = run(FAST, 0, "adalora")
    assert result["final_params"] <= result["budget_params"]
    assert result["recall"] >= RECALL_AT_LEAST, result
    assert result["residual"] <= RESIDUAL_AT_MOST, result


def test_options_set_the_warm_start_and_refuse_the_unknown() -> None:
    setup = with_options(FAST, ["adapter.init=gradient", "adapter.init_batches=2", "budget.selection=per_param"])
    assert (setup.init, setup.init_batches, setup.orth_weight) == ("gradient", 2, 0.1)
    assert setup.options == ("adapter.init=gradient", "adapter.init_batches=2", "budget.selection=per_param")
    for bad in ("adapter.init=svd", "adapter.lr=1", "train.learning_rate=1"):
        with pytest.raises(SystemExit):
            with_options(FAST, [bad])
    with pytest.raises(SystemExit) as err:  # every problem at once, a bad number among them
        with_options(FAST, ["adapter.init_batches=two", "adapter.orth_weight=x", "adapter.init=svd"])
    assert str(err.value) == (
        "--set adapter.init_batches=two: 'two' is not a int\n--set adapter.orth_weight=x: 'x' is not a float\n"
        "--set adapter.init=svd: expected orthonormal or gradient"
    )
    with pytest.raises(SystemExit, match="adapter.init_batches=0: expected N >= 1"):
        with_options(FAST, ["adapter.init_batches=0"])


class _Stop(Exception):
    """Ends a run right after its warm start."""


def test_the_warm_start_puts_p_and_q_on_the_gradients_top_directions(monkeypatch) -> None:
    """The benchmark's warm start (a tiny random model): right before training, every adapter's P and Q are the
    top-4 left and right singular vectors (up to sign) of the gradient of the matching loss to the planted
    teacher over the first adapter.init_batches training batches, with respect to its frozen weight: computed
    here by autograd on the plain base (lambda = 0, so the student is the base)."""
    options = ["adapter.init=gradient", "adapter.init_batches=3"]
    tiny = with_options(Setup(model="tiny", steps=20, eval_batches=1), options)
    seen = {}
    real = planted_rank.warm_start_

    def warm_start_then_stop(model, adapters, first, loss):  # noqa: ANN001, ANN202
        real(model, adapters, first, loss=loss)
        seen.update({name: (a.left_vectors.detach().clone(), a.right_vectors.detach().clone(), a.rank)
                     for name, a in adapters.items()})  # fmt: skip
        raise _Stop

    monkeypatch.setattr(planted_rank, "warm_start_", warm_start_then_stop)
    with pytest.raises(_Stop):
        run(tiny, 0, "adalora")
    tokenizer, base = base_model(tiny, 0)
    teacher = copy.deepcopy(base)
    plant(teacher, tiny, 0)
    first = batches(tokenizer, tiny, "train", tiny.steps, 0)[:3]
    weights = {name: base.get_submodule(name).weight for name in module_shapes(base, ["all-linear"])}
    for weight in weights.values():
        weight.requires_grad_(True)
    pairs = zip(first, teacher_states(teacher, first), strict=True)
    sum(matching_loss(base, targets, batch) for batch, targets in pairs).backward()  # type: ignore[union-attr]
    assert set(seen) == set(weights)
    for name, (left, right, rank) in seen.items():
        assert rank == tiny.init_rank
        u, _, vh = torch.linalg.svd(weights[name].grad.double(), full_matrices=False)
        signs = torch.sign((left.double() * u[:, :rank]).sum(0))  # each pair (u_i, v_i) is fixed up to one sign
        # 1e-4: both gradients are float32 sums, in other orders (at most 1.4e-5 apart here)
        torch.testing.assert_close(left.double() * signs, u[:, :rank], atol=1e-4, rtol=0, msg=name)
        torch.testing.assert_close(right.double() * signs[:, None], vh[:rank], atol=1e-4, rtol=0, msg=name)
