"""Turn task splits into model inputs, for classification or for label-word generation, and score them.

Generation format: the causal LM reads ``"<Field>: <text>\\n<Question>:"`` and is trained to write
`` <label word>`` then end-of-sequence; the loss covers the answer tokens only (prompt positions get
label -100). It is scored by exact match: the first word it generates, greedily, must be the label.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from adarank.config import RunConfig
from adarank.data import LABEL_NAMES, load_splits

PROMPTS = {"rotten_tomatoes": ("Review", "Sentiment"), "bbc_news": ("Article", "Topic")}
IGNORE_INDEX = -100


def prompt_ids(tokenizer: Any, dataset: str, text: str, max_tokens: int) -> list[int]:
    """Token ids of the prompt for one example, at most ``max_tokens``: the text is truncated, never
    the question that ends the prompt."""
    field, question = PROMPTS[dataset]
    question_ids = tokenizer(f"\n{question}:", add_special_tokens=False)["input_ids"]
    head = tokenizer(f"{field}: {text}")["input_ids"]
    return head[: max_tokens - len(question_ids)] + question_ids


def answer_ids(tokenizer: Any, word: str) -> list[int]:
    """Token ids of the answer: the label word after a space, then end-of-sequence."""
    return tokenizer(" " + word, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def _classification(tokenizer: Any, texts: list[str], labels: list[int], max_length: int) -> dict[str, list]:
    return {**tokenizer(texts, truncation=True, max_length=max_length), "labels": labels}


def _generation(tokenizer: Any, dataset: str, texts: list[str], labels: list[int], max_length: int) -> dict:
    answers = [answer_ids(tokenizer, LABEL_NAMES[dataset][y]) for y in labels]
    room = max_length - max(len(a) for a in answers)
    prompts = [prompt_ids(tokenizer, dataset, t, room) for t in texts]
    input_ids = [p + a for p, a in zip(prompts, answers, strict=True)]
    return {
        "input_ids": input_ids,
        "attention_mask": [[1] * len(ids) for ids in input_ids],
        "labels": [[IGNORE_INDEX] * len(p) + a for p, a in zip(prompts, answers, strict=True)],
    }


def build_datasets(tokenizer: Any, cfg: RunConfig) -> dict[str, Any]:
    """Tokenized train / validation / test splits (``datasets.Dataset``) for the configured task; each
    keeps its raw ``text`` and ``label`` columns too, for generation scoring."""
    from datasets import Dataset

    data = cfg.data
    out = {}
    for name, (texts, labels) in load_splits(data.dataset).items():
        limit = data.max_train_samples if name == "train" else data.max_eval_samples
        texts, labels = texts[:limit], labels[:limit]
        if data.format == "generation":
            encoded = _generation(tokenizer, data.dataset, texts, labels, data.max_length)
        else:
            encoded = _classification(tokenizer, texts, labels, data.max_length)
        out[name] = Dataset.from_dict({**encoded, "text": texts, "label": labels})
    return out


def model_columns(dataset: Any) -> Any:
    """The dataset without the raw columns the model does not take."""
    return dataset.remove_columns(["text", "label"])


class GenerationCollator:
    """Right-pads input_ids / attention_mask / labels of generation examples into tensors."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        return {
            key: torch.tensor([list(f[key]) + [pad] * (width - len(f[key])) for f in features])
            for key, pad in pads.items()
        }


def classification_accuracy(prediction: Any) -> dict[str, float]:
    """compute_metrics for the Trainer: fraction of argmax predictions equal to the label."""
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def first_word(text: str) -> str:
    """The first word of generated text, lower-cased, without punctuation."""
    words = re.findall(r"[a-z]+", text.lower())
    return words[0] if words else ""


def _left_padded(rows: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    return {
        "input_ids": torch.tensor([[pad_token_id] * (width - len(r)) + r for r in rows]),
        "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
    }


@torch.no_grad()
def generation_accuracy(
    model: nn.Module,
    tokenizer: Any,
    dataset: str,
    texts: list[str],
    labels: list[int],
    max_length: int,
    batch_size: int = 32,
) -> float:
    """Exact-match accuracy of the first greedily generated word against the label word (prompts
    built and truncated exactly as in training)."""
    names = LABEL_NAMES[dataset]
    new_tokens = max(len(answer_ids(tokenizer, n)) for n in names)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    try:
        for start in range(0, len(texts), batch_size):
            rows = [
                prompt_ids(tokenizer, dataset, t, max_length - new_tokens) for t in texts[start : start + batch_size]
            ]
            batch = {k: v.to(device) for k, v in _left_padded(rows, tokenizer.pad_token_id).items()}
            generated = model.generate(  # type: ignore[operator]
                **batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            answers = tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            gold = labels[start : start + batch_size]
            correct += sum(first_word(a) == names[y] for a, y in zip(answers, gold, strict=True))
    finally:
        model.train(was_training)
    return correct / max(1, len(texts))
