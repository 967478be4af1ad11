"""adarank: adaptive-rank (AdaLoRA) parameter-efficient fine-tuning.

The public names load lazily (PEP 562): ``import adarank`` and the command line's ``--help`` and
argument errors import neither torch nor transformers; the first use of a name imports its module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from adarank import _moved
from adarank._version import __version__ as __version__

_moved.install()  # adarank 0.1's module names (adarank.loop, adarank.trainer, ...) still import

_EXPORTS = {
    "RankAllocator": "adarank.core.allocator",
    "AdaRankCallback": "adarank.training.callback",
    "AdapterConfig": "adarank.config",
    "BudgetConfig": "adarank.config",
    "ConfigError": "adarank.config",
    "ImportanceConfig": "adarank.config",
    "RunConfig": "adarank.config",
    "load_config": "adarank.checks",
    "ExportError": "adarank.core.export",
    "export_merged": "adarank.core.export",
    "export_native": "adarank.core.export",
    "export_peft": "adarank.core.export",
    "load_adapter": "adarank.core.export",
    "save_adapter": "adarank.core.export",
    "swap_adapter": "adarank.core.export",
    "count_live_parameters": "adarank.core.inject",
    "count_trainable": "adarank.core.inject",
    "find_adapters": "adarank.core.inject",
    "inject_adapters": "adarank.core.inject",
    "SVDLinear": "adarank.core.layers",
    "orthogonality_penalty": "adarank.core.regularization",
    "BudgetPlan": "adarank.core.schedule",
    "shrink_": "adarank.core.shrink",
    "budget_at": "adarank.core.schedule",
    "plan_budget": "adarank.core.schedule",
    "AdaRankTrainer": "adarank.training.trainer",
    "param_groups": "adarank.core.optim",
    "warm_start_": "adarank.core.warm_start",
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
    from adarank.checks import load_config
    from adarank.config import AdapterConfig, BudgetConfig, ConfigError, ImportanceConfig, RunConfig
    from adarank.core.allocator import RankAllocator
    from adarank.core.export import (
        ExportError,
        export_merged,
        export_native,
        export_peft,
        load_adapter,
        save_adapter,
        swap_adapter,
    )
    from adarank.core.inject import count_live_parameters, count_trainable, find_adapters, inject_adapters
    from adarank.core.layers import SVDLinear
    from adarank.core.optim import param_groups
    from adarank.core.regularization import orthogonality_penalty
    from adarank.core.schedule import BudgetPlan, budget_at, plan_budget
    from adarank.core.shrink import shrink_
    from adarank.core.warm_start import warm_start_
    from adarank.training.callback import AdaRankCallback
    from adarank.training.trainer import AdaRankTrainer
