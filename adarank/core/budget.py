"""The budget's rules, on values alone: a parameter budget written as a count or a percentage, fractions
of the run given in steps, and every problem (and warning) of a ``BudgetConfig`` for a run of T steps."""

from __future__ import annotations

import math

from adarank.config import SCHEDULES, SCORES, SELECTIONS, BudgetConfig, ImportanceConfig

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}


def parse_param_budget(text: str | int | float, base_params: int | None = None) -> int:
    """A parameter budget such as `150000`, `150k`, `0.3M` or `0.5%` (of ``base_params``), as a count.

    Raises:
        ValueError: the text is not of that form, not positive, or a percentage without ``base_params``.
    """
    raw = str(text).strip().lower().replace("_", "").replace(",", "")
    hint = "write a count such as 150000, 150k or 0.3M, or a percentage of the base model such as 0.5%"
    percent = raw.endswith("%")
    number, unit = (raw[:-1], "") if percent else (raw.rstrip("kmb"), raw[len(raw.rstrip("kmb")) :])
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"budget.target_params `{text}` is not a parameter budget; {hint}.") from None
    if unit not in _UNITS or not math.isfinite(value) or value <= 0 or (percent and value > 100):
        raise ValueError(f"budget.target_params `{text}` is not a positive parameter budget; {hint}.")
    if percent:
        if base_params is None:
            raise ValueError(f"budget.target_params `{text}` is a percentage: it needs the base model's size.")
        return int(value / 100 * base_params)
    return int(value * _UNITS[unit])


def resolve_steps(value: float, total_steps: int) -> int:
    """A phase length given as steps (>= 1) or as a fraction of training (< 1), in steps."""
    return int(round(value * total_steps)) if value < 1 else int(value)


def budget_problems(budget: BudgetConfig, total_steps: int) -> list[str]:
    """Every problem with a budget schedule over ``total_steps`` optimizer steps."""
    problems = []
    if budget.schedule not in SCHEDULES:
        problems.append(f"budget.schedule `{budget.schedule}` is not one of {', '.join(SCHEDULES)}.")
    if budget.init_rank < 1:
        problems.append(f"budget.init_rank ({budget.init_rank}) must be >= 1.")
    if budget.target_rank < 0:
        problems.append(f"budget.target_rank ({budget.target_rank}) must be >= 0.")
    if budget.target_rank > budget.init_rank and budget.target_params is None:
        problems.append(
            f"budget.target_rank ({budget.target_rank}) must be <= budget.init_rank "
            f"({budget.init_rank}): the budget only shrinks; raise init_rank or lower target_rank."
        )
    if budget.schedule == "constant" and budget.target_rank != budget.init_rank and budget.target_params is None:
        problems.append(
            f"budget.schedule=constant keeps every rank (plain LoRA): set budget.target_rank equal to "
            f"budget.init_rank ({budget.init_rank}), or use schedule=cubic to prune."
        )
    if budget.target_params is not None:
        try:
            parse_param_budget(budget.target_params, base_params=1)
        except ValueError as err:
            problems.append(str(err))
    if budget.selection not in SELECTIONS:
        problems.append(f"budget.selection `{budget.selection}` is not one of {', '.join(SELECTIONS)}.")
    if budget.mask_interval < 1:
        problems.append(f"budget.mask_interval ({budget.mask_interval}) must be >= 1 step.")
    for name in ("t_init", "t_final"):
        value = getattr(budget, name)
        if not math.isfinite(value) or value < 0 or (value >= 1 and value != int(value)):
            problems.append(f"budget.{name} ({value}) must be a whole number of steps (>= 1) or a fraction in [0, 1).")
    if total_steps < 1:
        problems.append(f"train.max_steps, the total number of optimizer steps ({total_steps}), must be >= 1.")
    elif not problems and budget.schedule != "constant":
        t_init = resolve_steps(budget.t_init, total_steps)
        t_final = resolve_steps(budget.t_final, total_steps)
        if t_init + t_final >= total_steps:
            problems.append(
                f"t_init + t_final ({t_init}+{t_final}) must be < total_steps ({total_steps}): no "
                "budget-decay phase is left; lower them or train longer."
            )
    return problems


def budget_warnings(budget: BudgetConfig, total_steps: int) -> list[str]:
    """Legal schedules that will not do what a user expects: a decay with fewer than 2 masking steps
    cuts the rank in one go, from scores of a few steps (e.g. a 2-step smoke run)."""
    if budget.schedule == "constant" or budget_problems(budget, total_steps):
        return []
    t_init = resolve_steps(budget.t_init, total_steps)
    final_start = total_steps - resolve_steps(budget.t_final, total_steps)
    masking = [
        t for t in range(t_init + 1, final_start + 1) if t == final_start or (t - t_init) % budget.mask_interval == 0
    ]
    if len(masking) >= 2:
        return []
    return [
        f"the budget decay (steps {t_init}..{final_start} of {total_steps}) has {len(masking)} masking step(s), so the "
        "rank is cut in one go rather than on a schedule; raise train.max_steps, lower budget.mask_interval "
        f"({budget.mask_interval}), or lower budget.t_init / budget.t_final."
    ]


def allocator_problems(
    ranks: dict[str, int], budget: BudgetConfig, importance: ImportanceConfig, total_steps: int | None
) -> list[str]:
    """Problems of an allocator over adapters of ``ranks`` (module -> rank): the budget's (the step counts
    aside when T is not known yet), adapters of an adapting schedule whose rank is not budget.init_rank, and
    bad EMA settings."""
    problems = [p for p in budget_problems(budget, total_steps or 10**9) if "total_steps" not in p]
    wrong = [n for n, r in ranks.items() if r != budget.init_rank]
    if wrong and budget.schedule != "constant":  # a constant schedule trains whatever ranks the adapters have
        problems.append(f"adapters {wrong[:3]} do not have rank budget.init_rank={budget.init_rank}.")
    for name in ("beta_sensitivity", "beta_uncertainty"):
        if not 0 <= getattr(importance, name) < 1:
            problems.append(f"importance.{name} must be in [0, 1).")
    if importance.score not in SCORES:
        problems.append(f"importance.score `{importance.score}` is not one of {', '.join(SCORES)}.")
    return problems
