"""Scores + budget -> rank masks: the adaptive part of AdaLoRA (global top-b(t) over all triplets).

``RankAllocator`` owns the allocation's lifecycle (schedule, score EMAs, masks, finalization, shrink,
the record of masking events and the per-step trace, ``state_dict``); every driver (adarank's engine,
``AdaRankCallback`` in the Trainer, a loop of your own) calls the same hooks:

- ``begin(total_steps)`` once before training (resolves the schedule, records the trace's step 0);
- ``add_penalty_gradient_(term)`` before each backward and ``scale_penalty_gradient_(coefficient)``
  after clipping, only for ``importance.task_only`` (they do nothing otherwise);
- ``step(step, optimizer, model)`` after ``optimizer.step()`` and before ``zero_grad()``: it pairs
  the post-step weights with that step's (synchronized, accumulated, clipped) gradients, as the paper
  and PEFT do, updates the scores while the budget can still change, masks on masking steps and,
  with ``budget.shrink``, cuts the adapters to their live triplets once the final masks are fixed;
- ``check_finished()`` after the last step.
What a masking step does to pruned triplets (default, strict, final phase): ``adarank.core.masking``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from adarank.config import BudgetConfig, ConfigError, ImportanceConfig
from adarank.core.budget import allocator_problems
from adarank.core.importance import (
    ImportanceState,
    all_triplet_scores,
    finite_gradients,
    init_importance,
    update_importance_,
)
from adarank.core.layers import SVDLinear
from adarank.core.masking import (
    Trace,
    apply_masks_,
    live_budget,
    reset_optimizer_state_,
    select_top,
    trace_point,
    zero_pruned_,
)
from adarank.core.regularization import penalty_gradients
from adarank.core.schedule import BudgetPlan, budget_at, is_masking_step, needs_scores, plan_budget
from adarank.core.sharding import is_sharded
from adarank.core.shrink import cut_to_masks_, first_triplets, slice_scores

__all__ = ["RankAllocator", "reset_optimizer_state_", "select_top", "trace_point", "zero_pruned_"]

ShrinkHook = Callable[[nn.Module, Any], None]


class RankAllocator:
    """Global rank allocator over a set of SVD adapters, and the one owner of the allocation's state.

    Args:
        adapters: the adapters by module name (from ``inject_adapters`` or ``find_adapters``).
        budget: the budget schedule; ranks are taken from the adapters, b(0) must match them.
        importance: EMA coefficients of the scores.
        total_steps: optimizer steps of the run; may be given later with ``begin`` (``AdaRankCallback``
            takes it from the Trainer).
        base_params: parameters of the base model, needed for a ``target_params`` given in %.

    Raises:
        ConfigError: if the adapters or the schedule are invalid (every problem listed).
    """

    def __init__(
        self,
        adapters: Mapping[str, SVDLinear],
        budget: BudgetConfig,
        importance: ImportanceConfig | None = None,
        total_steps: int | None = None,
        base_params: int | None = None,
    ):
        self.adapters = dict(adapters)
        """The adapters still in the model (a shrink removes those left at rank 0)."""
        self.initial_ranks = {name: a.rank for name, a in self.adapters.items()}
        """Every adapted module's initial rank, in adapter order, whatever was shrunk since."""
        self.triplet_costs = {name: a.triplet_cost for name, a in self.adapters.items()}
        self.base_params = base_params
        self.budget = budget
        self.importance = importance or ImportanceConfig()
        problems = allocator_problems(self.initial_ranks, budget, self.importance, total_steps)
        if problems:
            raise ConfigError(problems)
        self.plan: BudgetPlan | None = None
        self.scores: dict[str, ImportanceState] = {}
        self.last_step = 0
        self._skipped: torch.Tensor | int = 0  # a device counter while training (``skipped_steps``)
        self.history: list[dict[str, Any]] = []  # every masking event: step, budget, live, ranks, ...
        self._trace = Trace()  # one point per step from step 0 (``trace_point``), read as ``trace``
        self.masked_scores: list[float] = []  # every triplet's score at the last masking step
        self.penalty_grads: dict[str, dict[str, torch.Tensor]] = {}
        """With importance.task_only: this step's orthogonality-penalty share of each adapter's P and Q
        gradients (``add_penalty_gradient_``); left out of the scores, then cleared."""
        self._shrink_hooks: list[ShrinkHook] = []
        self._warned_no_model = False
        if total_steps is not None:  # begin() may come later (the trace's step 0 needs real weights)
            self.set_total_steps(total_steps)

    @property
    def trace(self) -> list[dict[str, int]]:
        """One point per step from step 0: b(t) and the live rank in triplets and parameters
        (``trace_point``); the steps since the last read come from the device in one host sync."""
        return self._trace.points

    @property
    def skipped_steps(self) -> int:
        """Scoring steps skipped for non-finite gradients (read from the device: a host sync)."""
        return int(self._skipped)

    @property
    def finalized(self) -> bool:
        """Whether the final masks are fixed: the schedule adapts and its final phase has been reached."""
        plan = self.plan
        return plan is not None and plan.adapts and self.last_step >= plan.final_start

    @property
    def shrunk(self) -> bool:
        """Whether the adapters have been cut to their live triplets (some module lost triplets)."""
        return any(
            name not in self.adapters or self.adapters[name].rank < rank for name, rank in self.initial_ranks.items()
        )

    @property
    def last_event(self) -> dict[str, Any] | None:
        """The latest masking event (``history[-1]``); None before the first."""
        return self.history[-1] if self.history else None

    def begin(self, total_steps: int) -> BudgetPlan:
        """Before training: resolve the schedule for ``total_steps`` optimizer steps and, unless resumed,
        record the trace's step 0 (init_rank with lambda = 0).

        Raises:
            ConfigError: a resumed allocator was planned for another number of steps.
            RuntimeError: ``budget.shrink`` on FSDP2-sharded adapters (the Trainer's FSDP2): not cut in place.
        """
        plan = self.set_total_steps(total_steps)
        sharded = [a for a in self.adapters.values() if is_sharded(a.singular_values)]
        if sharded and self.budget.shrink and plan.adapts:
            raise RuntimeError(
                "budget.shrink cannot cut adapters whose parameters are sharded DTensors (the transformers "
                "Trainer's FSDP2): set budget.shrink=false, or train with `adarank train "
                "distributed.strategy=fsdp2`, whose engine keeps the adapters whole."
            )
        if not len(self._trace) and self.last_step == 0:
            self._trace.record(list(self.adapters.values()), plan, 0)
        return plan

    def set_total_steps(self, total_steps: int) -> BudgetPlan:
        """Resolve the schedule for a run of ``total_steps`` optimizer steps (``begin`` calls it)."""
        costs = list(self.triplet_costs.values())  # every module adapted at the start, shrunk or not
        plan = plan_budget(self.budget, total_steps, costs, self.base_params, list(self.initial_ranks.values()))
        if self.plan is not None and self.plan != plan:
            raise ConfigError(
                [
                    f"the run now has {total_steps} steps but the allocator was planned for "
                    f"{self.plan.total_steps}; keep train.max_steps when resuming."
                ]
            )
        self.plan = plan
        return plan

    def register_shrink_hook(self, hook: ShrinkHook) -> None:
        """Call ``hook(model, optimizer)`` right after every shrink: a driver that wraps the model (e.g.
        in DistributedDataParallel, whose reducer holds the parameters it was built with) rebuilds the
        wrapper there. ``AdaRankTrainer`` registers one."""
        self._shrink_hooks.append(hook)

    @property
    def has_shrink_hooks(self) -> bool:
        """Whether a driver registered a shrink hook (``register_shrink_hook``)."""
        return bool(self._shrink_hooks)

    def _require_plan(self) -> BudgetPlan:
        if self.plan is None:
            raise RuntimeError(
                "the allocator does not know the number of training steps: call "
                "begin(T) first (AdaRankCallback does it at train begin)."
            )
        return self.plan

    def step(self, step: int, optimizer: Any = None, model: nn.Module | None = None) -> dict[str, Any] | None:
        """Account for optimizer step ``step`` (1-based): update scores, mask if it is a masking step,
        shrink once the final masks are fixed (``budget.shrink``, given ``model``), record the trace.

        Call after ``optimizer.step()`` and before ``optimizer.zero_grad()``, on unscaled gradients
        (with a loss scaler: after ``scaler.unscale_(optimizer)``). Pass the optimizer so the state of
        pruned triplets can be reset, and the (unwrapped) model so a shrink can replace modules. A step
        whose adapter gradients hold inf or NaN (an fp16 overflow: the scaler skipped the optimizer
        step) leaves the scores untouched and is counted in ``skipped_steps``; masking still happens
        on schedule, on the scores so far.

        Outside masking steps it never stops the host: the trace and the skip count stay on the device.

        Returns:
            The masking event (step, budget, threshold, ranks) on a masking step, else None.
        """
        plan = self._require_plan()
        if step <= self.last_step:
            raise ValueError(f"step {step} was already accounted for (last step {self.last_step}).")
        if needs_scores(step, plan):
            if not self.scores:
                self.scores = {n: init_importance(a) for n, a in self.adapters.items()}
            finite = finite_gradients(list(self.adapters.values()))  # on the device, agreed by all processes
            betas = (self.importance.beta_sensitivity, self.importance.beta_uncertainty)
            for name, adapter in self.adapters.items():
                update_importance_(self.scores[name], adapter, *betas, self.penalty_grads.get(name), finite)
            if finite is not None:
                self._skipped = self._skipped + (~finite).long()
        self.penalty_grads = {}
        event = None
        due_final = plan.adapts and not self.finalized and step >= plan.final_start
        if is_masking_step(step, plan) or due_final or self._strict_due(step, plan):
            event = self._mask(step, optimizer)
            self.history.append(event)
        self.last_step = step
        if event is not None and event["final"] and self.budget.shrink:
            if model is not None:
                self.shrink_(model, optimizer)
            elif not self._warned_no_model:
                self._warned_no_model = True
                warnings.warn(
                    "budget.shrink is on but allocator.step got no model: the adapters keep their pruned "
                    "triplets (masked, so the result is the same, only slower); pass model= to shrink.",
                    stacklevel=2,
                )
        self._trace.record(list(self.adapters.values()), plan, step)
        return event

    def add_penalty_gradient_(self, penalty: torch.Tensor) -> None:
        """With ``importance.task_only``, on a step that updates the scores: accumulate the gradient of
        ``penalty`` (the orthogonality term exactly as added to the loss, weight and accumulation
        divisor included) w.r.t. every adapter's P and Q, to leave it out of the scores. Call it before
        the loss's backward (autograd through the penalty alone; its graph is kept for the backward) on
        every micro-batch, and ``scale_penalty_gradient_`` after clipping. Otherwise does nothing."""
        if not self.importance.task_only or self.plan is None or not needs_scores(self.last_step + 1, self.plan):
            return
        for name, grads in penalty_gradients(penalty, self.adapters).items():
            held = self.penalty_grads.setdefault(name, {})
            for part, grad in grads.items():
                held[part] = held[part] + grad if part in held else grad

    def scale_penalty_gradient_(self, clip_coefficient: float | torch.Tensor) -> None:
        """Scale the recorded penalty share like the gradients it is part of: by gradient clipping's
        coefficient, min(1, max_norm / (norm + 1e-6)) as torch's clip_grad_norm_ applies it (a 0-dim
        tensor keeps it on the device)."""
        for held in self.penalty_grads.values():
            for grad in held.values():
                grad.mul_(clip_coefficient)

    def check_finished(self) -> None:
        """Raise if training ended before the final masks were fixed (allocation never ran).

        Raises:
            RuntimeError: the schedule adapts but the final phase was never reached.
        """
        plan = self._require_plan()
        if plan.adapts and not self.finalized:
            raise RuntimeError(
                f"rank allocation did not finish: {self.last_step} of {plan.total_steps} steps were "
                f"accounted for and the final masks (from step {plan.final_start}) were never fixed. The "
                "model is a partly pruned LoRA, not an AdaLoRA result. Call allocator.step() after every "
                "optimizer step (in a Trainer, add AdaRankCallback) and train for all planned steps."
            )

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """Every adapter's triplet scores, in adapter order (``adarank.core.importance.all_triplet_scores``;
        the same on every process under FSDP2). Empty before any update."""
        if not self.scores:
            return {}
        return all_triplet_scores(self.adapters, self.scores, self.importance.score)

    def _strict_due(self, step: int, plan: BudgetPlan) -> bool:
        """Strict mode masks whenever b(t) falls below the live rank, so it never exceeds b(t)."""
        if not (self.budget.strict and plan.adapts and not self.finalized):
            return False
        return budget_at(step, plan) < self.live_budget()

    def live_budget(self) -> int:
        """What the live triplets use of the budget: their number, or their parameters (unit `params`)."""
        return live_budget(list(self.adapters.values()), self.plan is not None and self.plan.unit == "params")

    @torch.no_grad()
    def _mask(self, step: int, optimizer: Any) -> dict[str, Any]:
        plan = self._require_plan()
        budget = budget_at(step, plan)
        final = step >= plan.final_start
        per_adapter = []
        for name, scores in self.triplet_scores().items():  # adapter order: the split below assumes it
            if not torch.isfinite(scores).all():
                raise FloatingPointError(
                    f"importance scores of {name} are not finite at step {step}: refusing to mask on "
                    "them. Check the loss for NaN/inf or lower the learning rate."
                )
            per_adapter.append(scores)
        scores = torch.cat(per_adapter)
        eligible = (
            torch.cat([a.rank_mask.bool() for a in self.adapters.values()])
            if self.budget.strict
            else torch.ones_like(scores, dtype=torch.bool)
        )
        costs = None
        if plan.unit == "params":
            costs = torch.cat([torch.full((a.rank,), a.triplet_cost) for a in self.adapters.values()]).to(scores.device)
        per_cost = self.budget.selection == "per_param"
        keep = select_top(scores, budget, eligible, costs, per_cost).split([a.rank for a in self.adapters.values()])
        write_masks = self.budget.strict or final
        apply_masks_(list(self.adapters.values()), keep, write_masks, self.budget.reset_pruned, optimizer)
        kept_all = torch.cat(keep)
        kept_scores = scores[kept_all]
        self.masked_scores = scores.float().cpu().tolist()
        live = int(kept_all.sum()) if costs is None else int(costs[kept_all].sum())
        return {
            "step": step,
            "budget": budget,
            "unit": plan.unit,
            "live": live,
            "threshold": float(kept_scores.min()) if kept_scores.numel() else float("inf"),
            "final": final,
            "ranks": {n: int(k.sum()) for n, k in zip(self.adapters, keep, strict=True)},
        }

    def ranks(self) -> dict[str, int]:
        """Current forward-pass rank of every adapted module (rank-mask entries equal to 1); 0 for one a
        shrink turned back into its plain layer."""
        return {name: self.adapters[name].live_rank() if name in self.adapters else 0 for name in self.initial_ranks}

    def shrink_(self, model: nn.Module, optimizer: Any = None) -> dict[str, int]:
        """Cut every adapter to the triplets its fixed forward mask keeps, in ``model`` (unwrapped) and in
        ``optimizer``, slice the score EMAs along, forget adapters left with none (they become plain
        layers; ``ranks`` reports them at 0) and run the shrink hooks. A no-op once shrunk. Returns
        the live rank of every module.

        Raises:
            RuntimeError: the masks are not fixed yet (shrink only in the final phase).
        """
        if not self.finalized:
            raise RuntimeError("shrink only after the final masks are fixed (the final phase of the schedule).")
        if self.shrunk:
            return self.ranks()
        keep = {name: adapter.rank_mask.bool() for name, adapter in self.adapters.items()}
        self._cut(model, keep, optimizer)
        for hook in self._shrink_hooks:
            hook(model, optimizer)
        return self.ranks()

    def _cut(self, model: nn.Module, keep: Mapping[str, torch.Tensor], optimizer: Any = None) -> None:
        removed = cut_to_masks_(model, self.adapters, keep, optimizer)
        self.scores = {
            name: slice_scores(state, keep[name].to(torch.bool))
            for name, state in self.scores.items()
            if name not in removed
        }
        for name in removed:
            self.adapters.pop(name)

    def state_dict(self) -> dict[str, Any]:
        """Score EMAs, counters, history and trace (masks live on the adapters, in ``model.state_dict()``).
        Everything but ``scores`` (tensors) is JSON-serialisable."""
        return {
            "last_step": self.last_step,
            "skipped_steps": self.skipped_steps,
            "masked_scores": self.masked_scores,
            "plan": asdict(self.plan) if self.plan else None,
            "history": self.history,
            "trace": self.trace,
            "shrunk": self.shrunk,
            "scores": {n: {k: v.clone() for k, v in s.items()} for n, s in self.scores.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any], model: nn.Module | None = None) -> None:
        """Restore ``state_dict()`` output; the adapters must be the same modules by name. A state saved
        after the shrink first gives ``model`` the shrunk shapes (each adapter keeps its first
        final-rank triplets, overwritten when the model's weights are loaded; rank-0 ones become plain
        layers): load the weights and build the optimizer after this.

        Raises:
            ValueError: the state is for other adapters, or was saved after a shrink and no model is given.
        """
        shrunk_ranks = state.get("shrunk_ranks")  # written by adarank 0.1 (the Trainer engine's callback)
        history = list(state.get("history", []))
        if shrunk_ranks is None and state.get("shrunk"):
            final = [e for e in history if e.get("final")]
            shrunk_ranks = final[-1]["ranks"] if final else None
        if shrunk_ranks and not self.shrunk:
            if model is None:
                raise ValueError(
                    "this allocator state was saved after the final-phase shrink: pass the model "
                    "(allocator.load_state_dict(state, model)) so its shrunk shapes can be rebuilt first."
                )
            keep = first_triplets(self.adapters, shrunk_ranks)
            self._cut(model, keep)
        scores = state["scores"]
        if scores and set(scores) != set(self.adapters):
            raise ValueError(
                "allocator state is for other adapters than this model's: differs in "
                f"{sorted(set(scores) ^ set(self.adapters))[:3]}"
            )
        self.plan = BudgetPlan(**state["plan"]) if state["plan"] else None
        self.last_step = int(state["last_step"])
        self._skipped = int(state.get("skipped_steps", 0))
        self.masked_scores = list(state.get("masked_scores", []))
        self.history = history
        self._trace = Trace(state.get("trace", []))
        self.scores = {  # in adapter order, whatever order the saved state used
            name: {k: v.to(self.adapters[name].singular_values.device) for k, v in scores[name].items()}
            for name in self.adapters
            if name in scores
        }
