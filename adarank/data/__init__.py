"""Data: read a source through ``datasets`` (``sources``), carve and check the splits (``splits``), encode
them for a format (``tasks``). The names below are the public ones (``from adarank.data import ...``)."""

from adarank.data.checks import conversation_problem
from adarank.data.sources import LABEL_NAMES, DataError
from adarank.data.splits import (
    PROMPTS,
    Split,
    TaskData,
    bbc_news,
    carve,
    label_prompt_template,
    load_splits,
    load_task,
    rotten_tomatoes,
)
from adarank.io.assets import default_model_path

__all__ = [
    "LABEL_NAMES",
    "PROMPTS",
    "DataError",
    "Split",
    "TaskData",
    "bbc_news",
    "carve",
    "conversation_problem",
    "default_model_path",
    "label_prompt_template",
    "load_splits",
    "load_task",
    "rotten_tomatoes",
]
