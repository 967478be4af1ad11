"""What a run will do before it runs: adapters found, b(t) over training, parameters, matching LoRA rank.

``adarank plan`` prints ``plan_summary`` and writes ``plot_budget``'s PNG; ``adarank train`` prints
the same summary at start.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from adarank.config import RunConfig
from adarank.core.schedule import BudgetPlan, budget_at, constant_rank_budget, lora_rank_for, plan_budget

_BLOCK_INDEX = re.compile(r"\.\d+\.")
_BARS = "▁▂▃▄▅▆▇█"


def adapter_plan(cfg: RunConfig, shapes: Mapping[str, tuple[int, int]], base_params: int) -> BudgetPlan:
    """The budget plan of ``cfg`` over adapters of ``shapes`` (name -> (d_out, d_in)).

    Raises:
        ConfigError: the schedule or the parameter budget is impossible.
    """
    costs = [d_out + d_in + 1 for d_out, d_in in shapes.values()]
    budget = constant_rank_budget(cfg.budget, costs, base_params)
    return plan_budget(budget, cfg.train.max_steps, costs, base_params)


def sparkline(values: list[int]) -> str:
    """Values as a line of block characters, lowest to highest."""
    low, high = min(values), max(values)
    span = max(high - low, 1)
    return "".join(_BARS[round((v - low) / span * (len(_BARS) - 1))] for v in values)


def _boundaries(plan: BudgetPlan) -> list[int]:
    middle = (plan.t_init + plan.final_start) // 2
    return sorted({0, plan.t_init, middle, plan.final_start, plan.total_steps})


def plan_summary(cfg: RunConfig, shapes: Mapping[str, tuple[int, int]], base_params: int) -> str:
    """A few lines that say what the run will do with its budget (pure: computed from shapes)."""
    plan = adapter_plan(cfg, shapes, base_params)
    if not shapes:
        return (
            f"adapters: none (adapter.target_modules=[]): the classification head alone is trained, a linear "
            f"probe on the frozen base; {plan.total_steps} steps, no rank budget"
        )
    costs = {name: d_out + d_in + 1 for name, (d_out, d_in) in shapes.items()}
    kinds = Counter(_BLOCK_INDEX.sub(".<i>.", name) for name in shapes)
    rank0 = constant_rank_budget(cfg.budget, list(costs.values()), base_params).init_rank
    params0 = rank0 * sum(costs.values())
    if plan.unit == "params":
        params_final, final_label = plan.target_budget, "at most"
    else:
        params_final = round(plan.target_budget * sum(costs.values()) / len(costs))
        final_label = "about"
    lora = lora_rank_for(params_final, list(shapes.values()))
    lora_r = max(1, int(lora))
    lora_params = lora_r * sum(d_out + d_in for d_out, d_in in shapes.values())
    steps = _boundaries(plan)
    if plan.adapts:
        schedule = (
            f"schedule: {plan.schedule}, {plan.total_steps} steps; warm-up to step {plan.t_init}, decay to step "
            f"{plan.final_start} (masking every {plan.mask_interval}), final masks fixed from step {plan.final_start}"
        )
    else:
        schedule = f"schedule: {plan.schedule}, {plan.total_steps} steps at rank {rank0} (plain LoRA: no scoring)"
    lines = [
        f"adapters: {len(shapes)} (" + ", ".join(f"{n} x{c}" for n, c in sorted(kinds.items())) + ")",
        schedule,
        f"budget b(t) in {plan.unit}: " + ", ".join(f"b({t})={budget_at(t, plan):,}" for t in steps),
        "b(t) over training: " + sparkline([budget_at(round(i * plan.total_steps / 47), plan) for i in range(48)]),
        f"adapter parameters: {params0:,} at b(0) ({100 * params0 / base_params:.2f}% of the base model's "
        f"{base_params:,}); {final_label} {params_final:,} at b(T) ({100 * params_final / base_params:.2f}%)",
        f"matching LoRA rank for the final budget: r = {lora:.2f} (standard LoRA r={lora_r} on these modules: "
        f"{lora_params:,} parameters)",
    ]
    final_triplets = plan.target_budget if plan.unit == "triplets" else plan.target_budget // min(costs.values())
    if plan.adapts and final_triplets < len(shapes):
        lines.append(
            f"note: the final budget holds at most {final_triplets} triplets for {len(shapes)} adapters, so at least "
            f"{len(shapes) - final_triplets} adapters will end at rank 0 (legitimate: they keep the base weights)."
        )
    elif plan.adapts:
        lines.append("note: allocation is global, so an adapter whose triplets all score low may end at rank 0.")
    return "\n".join(lines)


def plot_budget(plan: BudgetPlan, path: Path) -> Path:
    """Write a PNG of b(t) over training with the warm-up, decay and final phases shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(plan.total_steps + 1))
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    ax.plot(steps, [budget_at(t, plan) for t in steps], color="#1f5fa8", lw=2, label="b(t)")
    ax.axvspan(0, plan.t_init, color="#d9ead3", label="warm-up: b(0)")
    ax.axvspan(plan.t_init, plan.final_start, color="#fff2cc", label=f"{plan.schedule} decay")
    ax.axvspan(plan.final_start, plan.total_steps, color="#f4cccc", label="final: b(T), masks fixed")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"budget ({plan.unit})")
    ax.set_xlim(0, plan.total_steps)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("adarank budget schedule")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
