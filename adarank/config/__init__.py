"""The run configuration: its schema (``schema``: frozen dataclasses, defaults, one-line field docs, rules
on values alone) and its keys as the command line shows them (``keys``). Loading a YAML file with
overrides and checking it against files and models is ``adarank.checks``, the layer above."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from adarank.config.keys import (
    key_docs,
    key_table,
    list_keys,
    schema_keys,
)
from adarank.config.schema import (
    DTYPES,
    ENGINE_STATE,
    FORMATS,
    HEAD_MODES,
    INCLUDE_KEY,
    INITS,
    RESUME_MARKER,
    SCHEDULES,
    SCORES,
    SELECTIONS,
    SINGULAR_LR_MULTIPLIER,
    STRATEGIES,
    WANDB_MODES,
    AdapterConfig,
    BudgetConfig,
    ConfigError,
    DataConfig,
    DistributedConfig,
    ImportanceConfig,
    IntrinsicDimConfig,
    IntrinsicDimRunConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    WandbConfig,
    sft_mode,
    template_fields,
    to_yaml,
)

__all__ = [
    "AdapterConfig",
    "BudgetConfig",
    "ConfigError",
    "DTYPES",
    "DataConfig",
    "DistributedConfig",
    "ENGINE_STATE",
    "FORMATS",
    "HEAD_MODES",
    "INCLUDE_KEY",
    "INITS",
    "ImportanceConfig",
    "IntrinsicDimConfig",
    "IntrinsicDimRunConfig",
    "ModelConfig",
    "RESUME_MARKER",
    "RunConfig",
    "SCHEDULES",
    "SCORES",
    "SELECTIONS",
    "SINGULAR_LR_MULTIPLIER",
    "STRATEGIES",
    "TrainConfig",
    "WANDB_MODES",
    "WandbConfig",
    "key_docs",
    "key_table",
    "list_keys",
    "schema_keys",
    "sft_mode",
    "template_fields",
    "to_yaml",
]

_MOVED = {
    "VERBATIM_KEYS": "adarank.checks",
    "data_problems": "adarank.data.checks",
    "distributed_problems": "adarank.checks",
    "intrinsic_dim_problems": "adarank.checks",
    "load_config": "adarank.checks",
    "model_problems": "adarank.checks",
    "sft_problems": "adarank.data.checks",
    "validate": "adarank.checks",
    "budget_problems": "adarank.core.budget",
    "budget_warnings": "adarank.core.budget",
    "parse_param_budget": "adarank.core.budget",
    "resolve_steps": "adarank.core.budget",
}


def __getattr__(name: str) -> Any:
    """adarank 0.1 imported these names from here; in 0.2 they live in layers above the schema (loading and
    checks read files and models; the budget's rules belong to the method). A thin alias: one
    DeprecationWarning naming the new home, then the object itself, imported at first use (the schema
    must not import the layers above it)."""
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module 'adarank.config' has no attribute {name!r}")
    warnings.warn(f"`adarank.config.{name}` moved to `{home}.{name}` in adarank 0.2.", DeprecationWarning, 2)
    return getattr(importlib.import_module(home), name)
