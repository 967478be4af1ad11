"""adarank: adaptive-rank (AdaLoRA) parameter-efficient fine-tuning.

The public names load lazily (PEP 562): ``import adarank`` and the command line's ``--help`` and
argument errors import neither torch nor transformers; the first use of a name imports its module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "RankAllocator": "adarank.allocator",
    "AdaRankCallback": "adarank.callback",
    "AdapterConfig": "adarank.config",
    "BudgetConfig": "adarank.config",
    "ConfigError": "adarank.config",
    "ImportanceConfig": "adarank.config",
    "RunConfig": "adarank.config",
    "load_config": "adarank.config",
    "ExportError": "adarank.export",
    "export_merged": "adarank.export",
    "export_native": "adarank.export",
    "export_peft": "adarank.export",
    "load_adapter": "adarank.export",
    "save_adapter": "adarank.export",
    "swap_adapter": "adarank.export",
    "count_live_parameters": "adarank.inject",
    "count_trainable": "adarank.inject",
    "find_adapters": "adarank.inject",
    "inject_adapters": "adarank.inject",
    "SVDLinear": "adarank.layers",
    "orthogonality_penalty": "adarank.regularization",
    "BudgetPlan": "adarank.schedule",
    "shrink_": "adarank.shrink",
    "budget_at": "adarank.schedule",
    "plan_budget": "adarank.schedule",
    "AdaRankTrainer": "adarank.trainer",
    "param_groups": "adarank.trainer",
    "warm_start_": "adarank.warm_start",
}

__all__ = [
    "AdaRankCallback",
    "AdaRankTrainer",
    "AdapterConfig",
    "BudgetConfig",
    "BudgetPlan",
    "ConfigError",
    "ExportError",
    "ImportanceConfig",
    "RankAllocator",
    "RunConfig",
    "SVDLinear",
    "budget_at",
    "count_live_parameters",
    "count_trainable",
    "export_merged",
    "export_native",
    "export_peft",
    "find_adapters",
    "inject_adapters",
    "load_adapter",
    "load_config",
    "orthogonality_penalty",
    "param_groups",
    "plan_budget",
    "save_adapter",
    "shrink_",
    "swap_adapter",
    "warm_start_",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'adarank' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from adarank.allocator import RankAllocator
    from adarank.callback import AdaRankCallback
    from adarank.config import AdapterConfig, BudgetConfig, ConfigError, ImportanceConfig, RunConfig, load_config
    from adarank.export import (
        ExportError,
        export_merged,
        export_native,
        export_peft,
        load_adapter,
        save_adapter,
        swap_adapter,
    )
    from adarank.inject import count_live_parameters, count_trainable, find_adapters, inject_adapters
    from adarank.layers import SVDLinear
    from adarank.regularization import orthogonality_penalty
    from adarank.schedule import BudgetPlan, budget_at, plan_budget
    from adarank.shrink import shrink_
    from adarank.trainer import AdaRankTrainer, param_groups
    from adarank.warm_start import warm_start_
