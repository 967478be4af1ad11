"""The schema's keys as the command line shows them: dotted names, defaults, types and the one-line field
docs read from the dataclasses (``adarank train --help`` and the key table of docs/configuration.md)."""

from __future__ import annotations

import ast
import inspect
import typing
from dataclasses import MISSING, fields, is_dataclass
from functools import cache
from typing import Any

from adarank.config.schema import IntrinsicDimRunConfig, RunConfig


def _leaf_fields(schema: type = RunConfig, prefix: str = "") -> dict[str, tuple[type, Any, type]]:
    """Dotted key -> (owning dataclass, default, annotated type) for every leaf of the schema."""
    hints = typing.get_type_hints(schema)
    out: dict[str, tuple[type, Any, type]] = {}
    for f in fields(schema):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if is_dataclass(default):
            out |= _leaf_fields(type(default), f"{prefix}{f.name}.")
        else:  # owned by the class that declares it (its docstring is in that class's source)
            owner = next(c for c in schema.__mro__ if f.name in vars(c).get("__annotations__", {}))
            out[prefix + f.name] = (owner, default, hints[f.name])
    return out


@cache
def _schema_fields(schema: type = IntrinsicDimRunConfig) -> dict[str, tuple[type, Any, type]]:
    """``_leaf_fields`` of ``schema``, computed once (callers must not modify it); by default every key
    of every command (a run's and `adarank intrinsic-dim`'s own section)."""
    return _leaf_fields(schema)


def schema_keys(schema: type = IntrinsicDimRunConfig) -> list[str]:
    """All dotted leaf keys of ``schema``, e.g. ``budget.init_rank``; by default every command's."""
    return list(_schema_fields(schema))


def _is_list(kind: Any) -> bool:
    """Whether a field's type is a list, or a list or None."""
    return typing.get_origin(kind) is list or any(typing.get_origin(t) is list for t in typing.get_args(kind))


def list_keys() -> list[str]:
    """Keys whose value is a list (a single string is accepted for them and means a one-item list)."""
    return [k for k, (_, _, kind) in _schema_fields().items() if _is_list(kind)]


@cache
def _docstrings(schema: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the dataclass source (PEP 257 attribute
    docstrings, read with ``ast``: Python keeps no such docstring at run time)."""
    tree = ast.parse(inspect.getsource(schema))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        is_field = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        text = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) else None
        if is_field and isinstance(text, str):
            docs[node.target.id] = " ".join(text.split())
    return docs


def key_docs() -> dict[str, tuple[Any, str]]:
    """Every config key -> (default, one-line description with its allowed values), from the schema."""
    return {
        key: (default, _docstrings(owner).get(key.rsplit(".", 1)[-1], ""))
        for key, (owner, default, _) in _schema_fields().items()
    }


def _type_hint(key: str) -> str:
    """What to write for ``key``, from its type and default (used in type-error messages)."""
    entry = _schema_fields().get(key)
    if entry is None:
        return "Give a value of the type the key expects."
    _, default, kind = entry
    if _is_list(kind):
        return f"`{key}` takes a list, e.g. `{key}=[query,value]` (a single name is fine too)."
    base = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}
    what = " or ".join(names.get(t, getattr(t, "__name__", str(t))) for t in base)
    nullable = " or null" if type(None) in typing.get_args(kind) else ""
    example = (
        "" if default is None else f", e.g. `{key}={str(default).lower() if isinstance(default, bool) else default}`"
    )
    return f"`{key}` takes {what}{nullable}{example}."


def key_table() -> str:
    """The config keys as a Markdown table (key, default, description): docs/configuration.md's list is this text."""
    rows = ["| key | default | description |", "|---|---|---|"]
    for key, (default, doc) in key_docs().items():
        shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else repr(default)
        rows.append(f"| `{key}` | `{shown}` | {doc.replace('|', '&#124;')} |")
    return "\n".join(rows)
