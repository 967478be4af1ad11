"""Budget schedule b(t): how many triplets may stay live after optimizer step t (pure functions).

Steps count completed optimizer steps, t = 1..T. With b0 = init_rank x n_adapters and
bT = target_rank x n_adapters (AdaLoRA eq. 8, cubic case):

    b(t) = b0                                          t <= t_init      (warm-up)
    b(t) = bT + floor((b0 - bT) (1 - (t - t_init) / (T - t_final - t_init))^3)   (decay)
    b(t) = bT                                          t >= T - t_final (final phase)

`linear` uses the first power instead of the cube; `constant` keeps b0 (= bT) throughout.

With ``budget.target_params`` the budget is counted in adapter parameters instead (unit `params`):
b0 = init_rank x sum_k c_k and bT = target_params, where c_k = d_in + d_out + 1 is the cost of one
triplet of adapter k. The allocator then keeps the best-scored triplets whose costs fit in b(t), so
the realized parameter count never exceeds the budget (a triplet budget would drift with where the
rank goes: on MiniLM an FFN triplet costs 2.5x an attention one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from adarank.config import BudgetConfig, ConfigError
from adarank.core.budget import budget_problems, parse_param_budget, resolve_steps


@dataclass(frozen=True)
class BudgetPlan:
    """A budget schedule resolved against a training run: integer steps and budgets in ``unit``
    (`triplets`, or `params` when the budget was given as ``target_params``)."""

    schedule: str
    total_steps: int
    t_init: int
    t_final: int
    mask_interval: int
    initial_budget: int
    target_budget: int
    unit: str = "triplets"

    @property
    def final_start(self) -> int:
        """The first step of the final phase, where masks are fixed for good."""
        return self.total_steps - self.t_final

    @property
    def adapts(self) -> bool:
        """Whether the budget ever changes (False for plain LoRA: no scoring at all)."""
        return self.initial_budget != self.target_budget


def plan_budget(
    budget: BudgetConfig,
    total_steps: int,
    triplet_costs: Sequence[int],
    base_params: int | None = None,
    ranks: Sequence[int] | None = None,
) -> BudgetPlan:
    """Resolve ``budget`` for ``total_steps`` optimizer steps over adapters whose triplets cost
    ``triplet_costs`` parameters each (one entry per adapter; ``base_params`` sizes a `%` budget). With a
    constant schedule, ``ranks`` (the adapters' ranks, in the same order) makes b(t) their sum: fixed ranks
    that differ by module (adapter.ranks_from); without it every adapter has budget.init_rank.

    Raises:
        ConfigError: if the schedule is impossible (every problem listed).
    """
    problems = budget_problems(budget, total_steps)
    n_adapters = len(triplet_costs)
    if budget.target_params is not None and budget.schedule == "constant":
        problems.append("a constant schedule with budget.target_params needs ranks: call constant_rank_budget first.")
    if problems:
        raise ConfigError(problems)
    if n_adapters == 0:  # the head alone (adapter.target_modules=[]): nothing to allocate, b(t) = 0
        return BudgetPlan("constant", total_steps, 0, 0, budget.mask_interval, 0, 0)
    constant = budget.schedule == "constant"
    initial, target, unit = budget.init_rank * n_adapters, budget.target_rank * n_adapters, "triplets"
    if constant and ranks is not None:
        initial = target = sum(ranks)
    if budget.target_params is not None:
        unit, initial = "params", budget.init_rank * sum(triplet_costs)
        target = _param_target(budget, base_params)
        if target > initial:
            raise ConfigError(
                [
                    f"budget.target_params ({budget.target_params} = {target:,}) exceeds the initial adapter "
                    f"parameters ({initial:,} at init_rank {budget.init_rank}); raise budget.init_rank or lower it."
                ]
            )
    return BudgetPlan(
        schedule=budget.schedule,
        total_steps=total_steps,
        t_init=0 if constant else resolve_steps(budget.t_init, total_steps),
        t_final=0 if constant else resolve_steps(budget.t_final, total_steps),
        mask_interval=budget.mask_interval,
        initial_budget=initial,
        target_budget=target,
        unit=unit,
    )


def _param_target(budget: BudgetConfig, base_params: int | None) -> int:
    assert budget.target_params is not None
    try:
        return parse_param_budget(budget.target_params, base_params)
    except ValueError as err:
        raise ConfigError([f"{err} Pass the base model's parameter count (adarank train does)."]) from err


def constant_rank_budget(budget: BudgetConfig, triplet_costs: Sequence[int], base_params: int | None) -> BudgetConfig:
    """For the constant schedule (plain LoRA) with ``target_params``: the same budget with the
    largest uniform rank whose adapters fit in it, as init_rank = target_rank. Other budgets as given.

    Raises:
        ConfigError: not even rank 1 fits in the parameter budget.
    """
    if budget.schedule != "constant" or budget.target_params is None or not triplet_costs:
        return budget
    target = _param_target(budget, base_params)
    rank = target // sum(triplet_costs)
    if rank < 1:
        raise ConfigError(
            [
                f"budget.target_params ({budget.target_params} = {target:,}) is below one rank on every adapter "
                f"({sum(triplet_costs):,} parameters); raise it or target fewer modules."
            ]
        )
    return replace(budget, init_rank=rank, target_rank=rank, target_params=None)


def lora_rank_for(params: int, shapes: Sequence[tuple[int, int]]) -> float:
    """The uniform rank r of a standard LoRA (B A, no lambda) on modules of ``shapes`` (d_out, d_in)
    with ``params`` parameters: r = params / sum_k (d_in + d_out)."""
    return params / sum(d_out + d_in for d_out, d_in in shapes)


def budget_at(step: int, plan: BudgetPlan) -> int:
    """Budget (live triplets, or their parameters) allowed after optimizer step ``step`` (0 = before)."""
    if not plan.adapts or step <= plan.t_init:
        return plan.initial_budget
    if step >= plan.final_start:
        return plan.target_budget
    progress = (step - plan.t_init) / (plan.final_start - plan.t_init)
    power = 3 if plan.schedule == "cubic" else 1
    extra = (plan.initial_budget - plan.target_budget) * (1 - progress) ** power
    return plan.target_budget + math.floor(extra)


def is_masking_step(step: int, plan: BudgetPlan) -> bool:
    """Whether masks are recomputed after ``step``: every mask_interval steps in the decay, and at
    the start of the final phase."""
    if not plan.adapts:
        return False
    if step == plan.final_start:
        return True
    in_decay = plan.t_init < step < plan.final_start
    return in_decay and (step - plan.t_init) % plan.mask_interval == 0


def needs_scores(step: int, plan: BudgetPlan) -> bool:
    """Whether importance scores must be updated after ``step``: only while masks can still change."""
    return plan.adapts and step <= plan.final_start
