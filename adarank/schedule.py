"""Budget schedule b(t): how many triplets may stay live after optimizer step t (pure functions).

Steps count completed optimizer steps, t = 1..T. With b0 = init_rank x n_adapters and
bT = target_rank x n_adapters (AdaLoRA eq. 8, cubic case):

    b(t) = b0                                          t <= t_init      (warm-up)
    b(t) = bT + floor((b0 - bT) (1 - (t - t_init) / (T - t_final - t_init))^3)   (decay)
    b(t) = bT                                          t >= T - t_final (final phase)

`linear` uses the first power instead of the cube; `constant` keeps b0 (= bT) throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adarank.config import BudgetConfig, ConfigError, budget_problems, resolve_steps


@dataclass(frozen=True)
class BudgetPlan:
    """A budget schedule resolved against a training run: integer steps and triplet counts."""

    schedule: str
    total_steps: int
    t_init: int
    t_final: int
    mask_interval: int
    initial_budget: int
    target_budget: int

    @property
    def final_start(self) -> int:
        """The first step of the final phase, where masks are fixed for good."""
        return self.total_steps - self.t_final

    @property
    def adapts(self) -> bool:
        """Whether the budget ever changes (False for plain LoRA: no scoring at all)."""
        return self.initial_budget != self.target_budget


def plan_budget(budget: BudgetConfig, total_steps: int, n_adapters: int) -> BudgetPlan:
    """Resolve ``budget`` for a run of ``total_steps`` optimizer steps over ``n_adapters`` adapters.

    Raises:
        ConfigError: if the schedule is impossible (every problem listed).
    """
    problems = budget_problems(budget, total_steps)
    if n_adapters < 1:
        problems.append("there are no adapters to allocate rank to; check adapter.target_modules.")
    if problems:
        raise ConfigError(problems)
    constant = budget.schedule == "constant"
    return BudgetPlan(
        schedule=budget.schedule,
        total_steps=total_steps,
        t_init=0 if constant else resolve_steps(budget.t_init, total_steps),
        t_final=0 if constant else resolve_steps(budget.t_final, total_steps),
        mask_interval=budget.mask_interval,
        initial_budget=budget.init_rank * n_adapters,
        target_budget=budget.target_rank * n_adapters,
    )


def budget_at(step: int, plan: BudgetPlan) -> int:
    """Number of live triplets allowed after optimizer step ``step`` (0 = before training)."""
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
