"""adarank: adaptive-rank (AdaLoRA) parameter-efficient fine-tuning."""

from adarank.allocator import RankAllocator
from adarank.callback import AdaRankCallback
from adarank.config import (
    AdapterConfig,
    BudgetConfig,
    ConfigError,
    ImportanceConfig,
    RunConfig,
    load_config,
)
from adarank.export import ExportError, export_merged, export_native, export_peft, load_adapter, swap_adapter
from adarank.inject import count_live_parameters, count_trainable, find_adapters, inject_adapters
from adarank.layers import SVDLinear
from adarank.regularization import orthogonality_penalty
from adarank.schedule import BudgetPlan, budget_at, plan_budget
from adarank.trainer import AdaRankTrainer, param_groups

__version__ = "0.1.0"

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
    "swap_adapter",
]
