"""The study tooling's tests share the package tests' fixtures (tests/conftest.py: tiny models, an
isolated working directory, wandb's files kept in the temporary folder)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "adarank_test_fixtures", Path(__file__).parents[2] / "tests" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

_isolated = _fixtures._isolated
bert = _fixtures.bert
save_tiny_model = _fixtures.save_tiny_model
tiny_bert = _fixtures.tiny_bert
tiny_config = _fixtures.tiny_config
