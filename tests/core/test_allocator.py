import copy

import pytest
import torch
from torch import nn

from adarank.config import BudgetConfig, ConfigError
from adarank.core.allocator import RankAllocator, select_top
from adarank.core.layers import SVDLinear
from adarank.core.schedule import budget_at


class Toy(nn.Module):
    def __init__(self, rank: int = 4, dims: tuple[tuple[int, int], ...] = ((8, 8),) * 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        self.layers = nn.ModuleList(SVDLinear(nn.Linear(i, o), rank, alpha=rank, generator=gen) for i, o in dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x

    def adapters(self) -> dict[str, SVDLinear]:
        return {f"layers.{i}": m for i, m in enumerate(self.layers)}


BUDGET = dict(init_rank=4, target_rank=2, t_init=4, t_final=6, mask_interval=2)


def _train(model: Toy, allocator: RankAllocator, steps: range, seed: int = 1, on_step=None) -> list:
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(seed)
    events = []
    for step in steps:
        x = torch.randn(16, 8, generator=gen)
        loss = (model(x) - x.flip(1)).pow(2).mean()
        loss.backward()
        optimizer.step()
        event = allocator.step(step, optimizer)
        if on_step:
            on_step(step, event, optimizer)
        optimizer.zero_grad()
        events.append(event)
    return events


def test_default_mode_live_triplets_equal_budget_after_each_masking_step() -> None:
    model = Toy()
    allocator = RankAllocator(model.adapters(), BudgetConfig(**BUDGET), total_steps=20)
    checked = []

    def check(step, event, optimizer):
        if event is None:
            return
        lam = torch.cat([a.singular_values for a in model.layers])
        assert int(torch.count_nonzero(lam)) == event["budget"] == budget_at(step, allocator.plan)
        assert sum(event["ranks"].values()) == event["budget"]
        checked.append(step)

    _train(model, allocator, range(1, 21), on_step=check)
    assert checked == [6, 8, 10, 12, 14]  # decay 4 < t < 14, every 2 steps, and the final start 14
    assert allocator.finalized
    assert sum(allocator.ranks().values()) == 6 == allocator.plan.target_budget
    # final masks are applied in the forward pass and stay fixed
    masks = torch.cat([a.rank_mask for a in model.layers])
    assert int(masks.sum()) == 6
    allocator.check_finished()


def test_strict_mode_never_exceeds_budget_and_resets_optimizer_state() -> None:
    model = Toy()
    allocator = RankAllocator(model.adapters(), BudgetConfig(**BUDGET, strict=True), total_steps=20)
    previous = torch.ones(12, dtype=torch.bool)

    def check(step, event, optimizer):
        nonlocal previous
        masks = torch.cat([a.rank_mask for a in model.layers]).bool()
        assert int(masks.sum()) <= budget_at(step, allocator.plan)
        assert not (masks & ~previous).any(), "strict masks only shrink"
        if event is not None:
            assert int(masks.sum()) == event["budget"]
            for layer in model.layers:
                off = ~layer.rank_mask.bool()
                assert torch.all(layer.singular_values[off] == 0)
                state = optimizer.state[layer.singular_values]
                assert torch.all(state["exp_avg"][off] == 0) and torch.all(state["exp_avg_sq"][off] == 0)
                assert torch.all(optimizer.state[layer.left_vectors]["exp_avg"][:, off] == 0)
                assert torch.all(optimizer.state[layer.right_vectors]["exp_avg_sq"][off, :] == 0)
        previous = masks

    _train(model, allocator, range(1, 21), on_step=check)
    assert int(torch.cat([a.rank_mask for a in model.layers]).sum()) == 6


def test_ties_break_toward_lower_index() -> None:
    scores = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0])
    keep = select_top(scores, 2, torch.ones(5, dtype=torch.bool))
    assert keep.tolist() == [False, True, True, False, False]
    eligible = torch.tensor([True, False, True, True, True])
    assert select_top(scores, 3, eligible).tolist() == [False, False, True, True, True]


def test_constant_schedule_never_scores_or_masks() -> None:
    model = Toy()
    allocator = RankAllocator(
        model.adapters(), BudgetConfig(schedule="constant", init_rank=4, target_rank=4), total_steps=10
    )
    events = _train(model, allocator, range(1, 11))
    assert events == [None] * 10 and allocator.scores == {}
    assert allocator.ranks() == {f"layers.{i}": 4 for i in range(3)}
    allocator.check_finished()


def test_unfinished_allocation_raises() -> None:
    model = Toy()
    allocator = RankAllocator(model.adapters(), BudgetConfig(**BUDGET), total_steps=20)
    _train(model, allocator, range(1, 10))
    with pytest.raises(RuntimeError, match="rank allocation did not finish: 9 of 20 steps"):
        allocator.check_finished()


def test_state_dict_resume_gives_same_masks() -> None:
    reference = Toy()
    ref_alloc = RankAllocator(reference.adapters(), BudgetConfig(**BUDGET), total_steps=20)
    ref_events = _train(reference, ref_alloc, range(1, 21))

    model = Toy()
    allocator = RankAllocator(model.adapters(), BudgetConfig(**BUDGET), total_steps=20)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    events = []
    for step in range(1, 21):
        if step == 9:  # "restart": a new allocator restored from the saved state
            saved = copy.deepcopy(allocator.state_dict())
            allocator = RankAllocator(model.adapters(), BudgetConfig(**BUDGET))
            allocator.load_state_dict(saved)
        x = torch.randn(16, 8, generator=gen)
        ((model(x) - x.flip(1)).pow(2).mean()).backward()
        optimizer.step()
        events.append(allocator.step(step, optimizer))
        optimizer.zero_grad()
    assert events == ref_events


def test_non_finite_scores_refused() -> None:
    model = Toy()
    allocator = RankAllocator(model.adapters(), BudgetConfig(**BUDGET), total_steps=20)

    def poison(step, event, optimizer):
        if step == 5:
            allocator.scores["layers.1"]["singular_values.sensitivity"][0] = float("nan")

    with pytest.raises(FloatingPointError, match="importance scores of layers.1 are not finite at step 6"):
        _train(model, allocator, range(1, 21), on_step=poison)


def test_rank_mismatch_and_empty_adapters() -> None:
    model = Toy(rank=3)
    with pytest.raises(ConfigError) as err:
        RankAllocator(model.adapters(), BudgetConfig(**BUDGET))
    assert "do not have rank budget.init_rank=4" in str(err.value)
    empty = RankAllocator({}, BudgetConfig(**BUDGET), total_steps=20)  # the head alone: nothing to allocate
    assert empty.plan is not None and (empty.plan.initial_budget, empty.plan.target_budget) == (0, 0)
    assert not empty.plan.adapts and [empty.step(t) for t in range(1, 21)] == [None] * 20 and empty.ranks() == {}


def mixed() -> Toy:
    """Three adapters of different shapes, so their triplets cost different numbers of parameters."""
    return Toy(dims=((8, 16), (16, 16), (16, 8)))


def test_select_top_with_costs_keeps_the_best_prefix_that_fits() -> None:
    scores = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.3])
    costs = torch.tensor([25, 25, 33, 33, 25])
    everything = torch.ones(5, dtype=torch.bool)
    # best first: 0 (25), 3 (58), 2 (91), 4 (116), 1 (141)
    assert select_top(scores, 100, everything, costs).tolist() == [True, False, True, True, False]
    assert select_top(scores, 57, everything, costs).tolist() == [True, False, False, False, False]
    assert select_top(scores, 24, everything, costs).tolist() == [False] * 5
    eligible = torch.tensor([True, True, True, False, True])
    assert select_top(scores, 100, eligible, costs).tolist() == [True, False, True, False, True]


def test_select_top_per_param_ranks_by_score_per_parameter_and_fills_greedily() -> None:
    scores = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.3])
    costs = torch.tensor([25, 25, 33, 33, 25])
    everything = torch.ones(5, dtype=torch.bool)
    # per parameter: 0 (.036), 3 (.021), 2 (.015), 4 (.012), 1 (.004); at 57: 0 fits (32 left), 3 and 2
    # do not, 4 does (7 left): the prefix rule stops at 3 and leaves 32 parameters unused
    assert select_top(scores, 57, everything, costs, per_cost=True).tolist() == [True, False, False, False, True]
    assert select_top(scores, 100, everything, costs, per_cost=True).tolist() == [True, False, True, True, False]
    no_four = torch.tensor([True, True, True, True, False])
    assert select_top(scores, 57, no_four, costs, per_cost=True).tolist() == [True, True, False, False, False]
    # a cheap triplet with a lower score beats an expensive one when its score per parameter is higher
    two, cheap = torch.tensor([0.6, 0.5]), torch.tensor([40, 10])
    assert select_top(two, 40, torch.ones(2, dtype=torch.bool), cheap).tolist() == [True, False]
    assert select_top(two, 40, torch.ones(2, dtype=torch.bool), cheap, per_cost=True).tolist() == [False, True]
    # without costs (a budget in ranks) it is the plain top-k
    assert select_top(scores, 2, everything, None, per_cost=True).tolist() == [True, False, False, True, False]


def test_unknown_selection_is_refused() -> None:
    with pytest.raises(ConfigError, match="budget.selection `knapsack` is not one of prefix, per_param"):
        RankAllocator(Toy().adapters(), BudgetConfig(**BUDGET, selection="knapsack"), total_steps=20)


@pytest.mark.parametrize("reset", [False, True])
def test_reset_pruned_zeroes_the_pruned_triplets_optimizer_state_at_each_masking_step(reset: bool) -> None:
    model = Toy()
    allocator = RankAllocator(model.adapters(), BudgetConfig(**BUDGET, reset_pruned=reset), total_steps=20)
    moments = []  # at each masking step of the decay: the largest Adam moment left on a pruned triplet

    def check(step, event, optimizer):
        if event is None or event["final"]:
            return
        largest = 0.0
        for layer in model.layers:
            off = layer.singular_values.detach() == 0
            assert layer.rank_mask.bool().all(), "default mode: the forward mask stays 1 during the decay"
            state = [optimizer.state[p] for p in (layer.singular_values, layer.left_vectors, layer.right_vectors)]
            for part in ("exp_avg", "exp_avg_sq"):
                pruned = (state[0][part][off], state[1][part][:, off], state[2][part][off, :])
                largest = max([largest, *(float(t.abs().max()) for t in pruned if t.numel())])
        moments.append(largest)

    _train(model, allocator, range(1, 21), on_step=check)
    assert len(moments) == 4  # steps 6, 8, 10, 12
    assert (max(moments) == 0) if reset else (min(moments) > 0)


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("selection", ["prefix", "per_param"])
def test_parameter_budget_is_never_exceeded(strict: bool, selection: str) -> None:
    model = mixed()
    budget = BudgetConfig(
        init_rank=4, target_params="150", t_init=4, t_final=6, mask_interval=2, strict=strict, selection=selection
    )
    allocator = RankAllocator(model.adapters(), budget, total_steps=20)
    plan = allocator.plan
    assert (plan.unit, plan.initial_budget, plan.target_budget) == ("params", 4 * (25 + 33 + 25), 150)
    seen = []

    def check(step, event, optimizer):
        lam_cost = sum(int(torch.count_nonzero(a.singular_values)) * a.triplet_cost for a in model.layers)
        if event is not None:
            assert lam_cost <= event["budget"] == budget_at(step, plan)
            assert event["unit"] == "params"
            seen.append(step)
        if strict:  # the forward pass never carries more than b(t)
            assert allocator.live_budget() <= budget_at(step, plan)

    _train(model, allocator, range(1, 21), on_step=check)
    assert 14 in seen
    final = sum(r * a.triplet_cost for r, a in zip(allocator.ranks().values(), model.layers, strict=True))
    assert final == allocator.live_budget() <= 150
    assert final > 150 - 33, "the budget is filled up to less than one triplet"


def test_percentage_budget_needs_the_base_model_size() -> None:
    model = mixed()
    with pytest.raises(ConfigError, match="is a percentage: it needs the base model's size"):
        RankAllocator(model.adapters(), BudgetConfig(init_rank=4, target_params="1%"), total_steps=20)
    allocator = RankAllocator(model.adapters(), BudgetConfig(init_rank=4, target_params="1%"), None, 20, 20_000)
    assert allocator.plan.target_budget == 200
