"""Where the modules of adarank 0.1's flat package live now. ``import adarank.loop`` (or any other old
name below) still works, with one DeprecationWarning naming the new home: an old module that moved
whole is bound to the new module itself; one whose code was split (``adarank.tasks``, ``adarank.loop``,
``adarank.intrinsic``) is a module of its own holding the names of its new homes. Installed by
``adarank/__init__.py``."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

MOVED: dict[str, str | tuple[str, ...]] = {
    "adarank.allocator": "adarank.core.allocator",
    "adarank.analyze": "adarank.analysis.analyze",
    "adarank.assets": "adarank.io.assets",
    "adarank.callback": "adarank.training.callback",
    "adarank.compare": "adarank.reporting.compare",
    "adarank.dashboards": "adarank.reporting.dashboards",
    "adarank.export": "adarank.core.export",
    "adarank.hub": "adarank.io.hub",
    "adarank.importance": "adarank.core.importance",
    "adarank.inject": "adarank.core.inject",
    "adarank.intrinsic": ("adarank.analysis.intrinsic", "adarank.analysis.subspace_runs"),
    "adarank.layers": "adarank.core.layers",
    "adarank.loop": ("adarank.training.engine", "adarank.training.checkpoint", "adarank.training.evaluate"),
    "adarank.models": "adarank.io.models",
    "adarank.plan": "adarank.reporting.plan",
    "adarank.regularization": "adarank.core.regularization",
    "adarank.report": "adarank.reporting.report",
    "adarank.rundir": "adarank.io.rundir",
    "adarank.schedule": "adarank.core.schedule",
    "adarank.sharding": "adarank.core.sharding",
    "adarank.shrink": "adarank.core.shrink",
    "adarank.sources": "adarank.data.sources",
    "adarank.subspace": "adarank.analysis.subspace",
    "adarank.tasks": ("adarank.data.tasks", "adarank.training.evaluate", "adarank.training.batches"),
    "adarank.trainer": "adarank.training.trainer",
    "adarank.warm_start": "adarank.core.warm_start",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and loads it as its new module (the same object), or as a module holding
    the names of its new homes."""

    def __init__(self) -> None:
        self._specs: dict[str, Any] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> ModuleType:
        homes = MOVED[spec.name]
        names = homes if isinstance(homes, tuple) else (homes,)
        warnings.warn(
            f"`{spec.name}` moved to `{'`, `'.join(names)}` in adarank 0.2; import it from there.",
            DeprecationWarning,
            stacklevel=2,
        )
        if isinstance(homes, str):
            module = importlib.import_module(homes)
            self._specs[spec.name] = module.__spec__  # the import system overwrites it; exec_module restores it
            return module
        merged = ModuleType(spec.name, f"adarank 0.1's `{spec.name}`, now in {', '.join(names)}.")
        for home in reversed(names):  # the first home wins a name two of them hold
            merged.__dict__.update(
                {k: v for k, v in vars(importlib.import_module(home)).items() if not k.startswith("__")}
            )
        return merged

    def exec_module(self, module: ModuleType) -> None:
        original = self._specs.pop(module.__spec__.name, None) if module.__spec__ is not None else None
        if original is not None:  # a module moved whole: keep its own spec (reload, pickling)
            module.__spec__ = original


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
