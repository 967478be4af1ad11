import pytest

from adarank.config import BudgetConfig, ConfigError
from adarank.core.schedule import budget_at, is_masking_step, needs_scores, plan_budget


def _plan(schedule: str = "cubic", **overrides: float):
    params = dict(init_rank=12, target_rank=8, t_init=10, t_final=20, mask_interval=5)
    params.update(overrides)
    return plan_budget(BudgetConfig(schedule=schedule, **params), total_steps=100, triplet_costs=[1] * 10)


def test_cubic_budget_at_phase_boundaries() -> None:
    plan = _plan()
    # b0 = 120, bT = 80, decay over steps 10..80 (70 steps)
    assert plan.final_start == 80
    assert [budget_at(t, plan) for t in (0, 1, 10)] == [120, 120, 120]
    # t=11: 80 + floor(40 * (69/70)^3) = 80 + floor(38.31...) = 118
    assert budget_at(11, plan) == 118
    # t=45: halfway, 80 + floor(40 * 0.125) = 85
    assert budget_at(45, plan) == 85
    # t=79: 80 + floor(40 * (1/70)^3) = 80
    assert budget_at(79, plan) == 80
    assert [budget_at(t, plan) for t in (80, 90, 100)] == [80, 80, 80]


def test_linear_budget() -> None:
    plan = _plan("linear")
    assert budget_at(45, plan) == 100  # 80 + 40 * 0.5
    assert budget_at(24, plan) == 112  # 80 + floor(40 * 56/70) = 80 + 32


def test_constant_is_plain_lora() -> None:
    plan = plan_budget(BudgetConfig(schedule="constant", init_rank=8, target_rank=8), 100, [1] * 10)
    assert not plan.adapts
    assert {budget_at(t, plan) for t in range(101)} == {80}
    assert not any(is_masking_step(t, plan) or needs_scores(t, plan) for t in range(101))


def test_masking_steps_and_scoring_window() -> None:
    plan = _plan()
    masking = [t for t in range(1, 101) if is_masking_step(t, plan)]
    assert masking == [15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80]
    assert needs_scores(80, plan) and not needs_scores(81, plan)


def test_fractions_resolve_to_steps() -> None:
    plan = plan_budget(BudgetConfig(t_init=0.1, t_final=0.3), total_steps=400, triplet_costs=[1, 1])
    assert (plan.t_init, plan.t_final, plan.final_start) == (40, 120, 280)


def test_impossible_schedule_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        plan_budget(BudgetConfig(init_rank=4, target_rank=6, mask_interval=0), total_steps=100, triplet_costs=[1])
    text = str(err.value)
    assert "target_rank (6) must be <= budget.init_rank (4)" in text
    assert "mask_interval (0) must be >= 1" in text
    with pytest.raises(ConfigError, match=r"t_init \+ t_final \(60\+40\) must be < total_steps \(100\)"):
        plan_budget(BudgetConfig(t_init=60, t_final=40), total_steps=100, triplet_costs=[1])


def test_parameter_budget_plan_and_matching_lora_rank() -> None:
    from adarank.core.schedule import constant_rank_budget, lora_rank_for

    costs = [769] * 24  # MiniLM attention linears: 384 + 384 + 1
    plan = plan_budget(BudgetConfig(init_rank=12, target_params="0.1M"), total_steps=400, triplet_costs=costs)
    assert (plan.unit, plan.initial_budget, plan.target_budget) == ("params", 221_472, 100_000)
    assert budget_at(40, plan) == 221_472 and budget_at(280, plan) == 100_000
    lora = constant_rank_budget(BudgetConfig(schedule="constant", target_params="150k"), costs, None)
    assert (lora.init_rank, lora.target_rank, lora.target_params) == (8, 8, None)  # 150000 // 18456 = 8
    assert lora_rank_for(147_456, [(384, 384)] * 24) == 8.0
    with pytest.raises(ConfigError, match="exceeds the initial adapter parameters"):
        plan_budget(BudgetConfig(init_rank=2, target_params="1M"), total_steps=400, triplet_costs=costs)
    with pytest.raises(ConfigError, match="below one rank on every adapter"):
        constant_rank_budget(BudgetConfig(schedule="constant", target_params="10k"), costs, None)
