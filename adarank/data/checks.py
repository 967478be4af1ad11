"""Checks of a run's data, all problems at once with their fixes: the data keys against each other and the
source they name (``data_problems``, ``sft_problems``), and the values of a loaded table (missing or
malformed cells, a conversation that is not a list of role/content turns, columns that are not there)."""

from __future__ import annotations

import math
from typing import Any

from adarank.config import FORMATS, DataConfig, sft_mode, template_fields
from adarank.data.sources import Table, source_problems
from adarank.io.hub import is_hub_id

SHOWN_ROWS = 3  # rows named per problem; the rest are counted


def rows_problem(table: Table, where: list[int], what: str, split: str, fix: str) -> str:
    """``<split> split: <what> at <file> row N, ... (and K more rows); <fix>.``"""
    shown = ", ".join(table.locate(i) for i in where[:SHOWN_ROWS])
    more = f" (and {len(where) - SHOWN_ROWS} more rows)" if len(where) > SHOWN_ROWS else ""
    return f"{split} split: {what} at {shown}{more}; {fix}."


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def label_value(value: Any) -> str | int | None:
    """A label as text or a whole number; None when it is neither."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str | int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


VALUE_PROBLEMS = {  # kind -> (what, fix), formatted with the column, its role's word and the first bad value
    "missing": ("missing {word} (column `{column}`)", "fill in or remove those rows"),
    "not text": (
        "column `{column}` holds a non-text value ({sample})",
        "check that `{column}` is the text column, or make those values text",
    ),
    "not a label": (
        "label `{sample}` is neither text nor a whole number (column `{column}`)",
        "make labels text or whole numbers",
    ),
    "empty response": ("empty response (column `{column}`)", "write the responses or remove those rows"),
    "not a conversation": (
        "column `{column}` holds a non-conversation ({sample})",
        "give each conversation as a list of {{role, content}} messages",
    ),
    "bad message": (
        "a message without a text `role` and `content` (column `{column}`: {sample})",
        "give every message a role (system, user, assistant) and its text content",
    ),
    "empty content": ("a message with empty content (column `{column}`)", "fill in or remove those messages"),
    "no assistant turn": (
        "a conversation with no assistant turn (column `{column}`)",
        "add the assistant's reply (the model learns those turns) or remove those rows",
    ),
}


def conversation_problem(value: Any) -> str | None:
    """The kind of problem of one conversation (a key of VALUE_PROBLEMS), or None."""
    if not isinstance(value, list | tuple) or not value:
        return "not a conversation"
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
            return "bad message"
        if not isinstance(message["content"], str):
            return "bad message"
    if any(not m["content"].strip() for m in value):
        return "empty content"
    if not any(m["role"] == "assistant" for m in value):
        return "no assistant turn"
    return None


def _value_problem(role: str, value: Any) -> str | None:
    """The kind of problem (a key of VALUE_PROBLEMS) of one value in a column of ``role``, or None."""
    if missing(value):
        return "missing"
    if role == "messages":
        return conversation_problem(value)
    if (role in ("text", "pair", "response") or role.startswith("prompt")) and not isinstance(value, str):
        return "not text"
    if role == "response" and not value.strip():
        return "empty response"
    if role == "label" and label_value(value) is None:
        return "not a label"
    return None


def value_problems(tables: dict[str, Table], roles: dict[str, str]) -> list[str]:
    problems = []
    for split, table in tables.items():
        for role, column in roles.items():
            values = table.columns[column]
            rows: dict[str, list[int]] = {}
            for i, value in enumerate(values):
                kind = _value_problem(role, value)
                if kind:
                    rows.setdefault(kind, []).append(i)
            for kind, where in rows.items():
                fields = {
                    "column": column,
                    "word": role if role in ("label", "group", "response") else "text",
                    "sample": repr(values[where[0]])[:40],
                }
                what, fix = (text.format(**fields) for text in VALUE_PROBLEMS[kind])
                problems.append(rows_problem(table, where, what, split, fix))
    return problems


def column_problems(tables: dict[str, Table], roles: dict[str, str], source: str) -> list[str]:
    problems = []
    keys = {
        "text": "data.text_field",
        "pair": "data.text_pair_field",
        "label": "data.label_field",
        "group": "data.group_field",
        "prompt": "data.prompt_field",
        "response": "data.response_field",
        "messages": "data.messages_field",
    }
    for split, table in tables.items():
        available = ", ".join(f"`{c}`" for c in table.available)
        for role, column in roles.items():
            if column not in table.columns:
                key = keys.get(role, "the data.prompt_template field")
                problems.append(
                    f"{key} `{column}` is not a column of `{source}` ({split} split); its columns: {available}."
                )
    return sorted(set(problems), key=problems.index)


def data_problems(data: DataConfig) -> list[str]:
    """Problems with the data keys visible without reading the data (the source is checked to exist)."""

    problems = source_problems(data.dataset)
    if data.subset is not None and not is_hub_id(data.dataset):
        problems.append(f"data.subset `{data.subset}` applies to hub datasets only; remove it for `{data.dataset}`.")
    if data.format not in FORMATS:
        problems.append(f"data.format `{data.format}` is unknown; use one of {', '.join(FORMATS)}.")
    if data.max_length < 8:
        problems.append(f"data.max_length ({data.max_length}) must be >= 8 tokens.")
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(data, name)
        if value is not None and value < 1:
            problems.append(f"data.{name} ({value}) must be >= 1, or null for all.")
    for name in ("text_field", "label_field"):
        if not getattr(data, name).strip():
            problems.append(f"data.{name} is empty; name a column of the data.")
    if data.text_pair_field is not None and data.format != "classification":
        problems.append("data.text_pair_field applies to data.format=classification only; remove it.")
    fractions = (data.validation_fraction, data.test_fraction)
    if not all(0 <= f < 1 for f in fractions) or sum(fractions) >= 1:
        problems.append(
            f"data.validation_fraction ({data.validation_fraction}) and data.test_fraction ({data.test_fraction}) "
            "must each be in [0, 1) and leave part of train, e.g. 0.1 and 0.1."
        )
    if data.split_seed < 0:
        problems.append(f"data.split_seed ({data.split_seed}) must be >= 0.")
    problems += sft_problems(data)
    if data.label_names is not None:
        names = list(data.label_names)
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            problems.append(f"data.label_names repeats {', '.join(f'`{n}`' for n in dupes)}; list each label once.")
        if data.format != "language_modeling" and len(names) < 2:
            problems.append("data.label_names needs at least two labels for classification or generation.")
    return problems


def sft_problems(data: DataConfig) -> list[str]:
    """Problems with the instruction / chat keys (data.prompt_field ... data.packing)."""
    problems = []
    keys = ("prompt_field", "response_field", "prompt_template", "messages_field", "chat_template",
            "max_answer_tokens")  # fmt: skip
    used = [k for k in keys if getattr(data, k) is not None]
    if data.packing:
        used.append("packing")
    if used and data.format != "generation":
        return [f"data.{', data.'.join(used)} apply to data.format=generation only; set it or remove them."]
    if data.messages_field and (data.prompt_field or data.prompt_template or data.response_field):
        problems.append(
            "data.messages_field (chat) and data.prompt_field / prompt_template / response_field (pairs) are two "
            "ways to give the data; keep one."
        )
    if data.chat_template and not data.messages_field:
        problems.append("data.chat_template applies to chat data only: name its column in data.messages_field.")
    if sft_mode(data) == "pairs":
        if not data.response_field:
            problems.append("data.response_field is missing: name the column holding the responses to learn.")
        if not data.prompt_field and not data.prompt_template:
            problems.append("name the prompt: data.prompt_field (a column) or data.prompt_template (a format string).")
        if data.prompt_field and data.prompt_template:
            problems.append(
                "data.prompt_field and data.prompt_template both build the prompt; keep one (a template may use "
                f"`{{{data.prompt_field}}}`)."
            )
        if data.prompt_template:
            try:
                if not template_fields(data.prompt_template):
                    problems.append("data.prompt_template uses no column; write the fields as {column}.")
            except ValueError as err:
                problems.append(f"data.prompt_template: {err}; write fields as {{column}} and braces as {{{{ }}}}.")
    if data.max_answer_tokens is not None and data.max_answer_tokens < 1:
        problems.append(f"data.max_answer_tokens ({data.max_answer_tokens}) must be >= 1, or null for no exact match.")
    return problems
