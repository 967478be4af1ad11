"""Turn task splits into model inputs (classification, label-word generation, language modeling) and
score them.

Generation format: the causal LM reads ``"<Field>: <text>\\n<Question>:"`` and is trained to write
`` <label name>`` then end-of-sequence; the loss covers the answer tokens only (prompt positions get
label -100). It is scored by exact match: the first words it generates, greedily, must be the label
name's words (lower case, punctuation ignored), and by the mean loss of the answer tokens.

Language-modeling format: each document's tokens, then end-of-sequence, concatenated and cut into
blocks of ``data.max_length``; the training split drops the last partial block, evaluation keeps it.
Loss and perplexity are per token over every evaluated token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from adarank.config import RunConfig
from adarank.data import TaskData

PROMPTS = {"rotten_tomatoes": ("Review", "Sentiment"), "bbc_news": ("Article", "Topic")}
DEFAULT_PROMPT = ("Text", "Answer")
IGNORE_INDEX = -100


def prompt_ids(tokenizer: Any, dataset: str, text: str, max_tokens: int) -> list[int]:
    """Token ids of the prompt for one example, at most ``max_tokens``: the text is truncated, never
    the question that ends the prompt."""
    field, question = PROMPTS.get(dataset, DEFAULT_PROMPT)
    question_ids = tokenizer(f"\n{question}:", add_special_tokens=False)["input_ids"]
    head = tokenizer(f"{field}: {text}")["input_ids"]
    return head[: max_tokens - len(question_ids)] + question_ids


def answer_ids(tokenizer: Any, word: str) -> list[int]:
    """Token ids of the answer: the label word after a space, then end-of-sequence."""
    return tokenizer(" " + word, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def _classification(
    tokenizer: Any, texts: list[str], pairs: list[str] | None, labels: list[int], max_length: int
) -> dict[str, list]:
    return {**tokenizer(texts, pairs, truncation=True, max_length=max_length), "labels": labels}


def _generation(
    tokenizer: Any, dataset: str, names: list[str], texts: list[str], labels: list[int], max_length: int
) -> dict:
    answers = [answer_ids(tokenizer, names[y]) for y in labels]
    room = max_length - max(len(answer_ids(tokenizer, n)) for n in names)
    prompts = [prompt_ids(tokenizer, dataset, t, room) for t in texts]
    input_ids = [p + a for p, a in zip(prompts, answers, strict=True)]
    return {
        "input_ids": input_ids,
        "attention_mask": [[1] * len(ids) for ids in input_ids],
        "labels": [[IGNORE_INDEX] * len(p) + a for p, a in zip(prompts, answers, strict=True)],
    }


def pack_blocks(token_lists: list[list[int]], eos_token_id: int, block: int, keep_last: bool) -> list[list[int]]:
    """Documents' tokens, each followed by end-of-sequence, concatenated and cut into blocks of
    ``block`` tokens; the last partial block is kept only with ``keep_last`` (or when it is the only one)."""
    stream = [token for tokens in token_lists for token in [*tokens, eos_token_id]]
    blocks = [stream[i : i + block] for i in range(0, len(stream), block)]
    if blocks and len(blocks[-1]) < block and not keep_last and len(blocks) > 1:
        blocks.pop()
    return blocks


def _language_modeling(tokenizer: Any, texts: list[str], block: int, keep_last: bool) -> dict[str, list]:
    tokens = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    blocks = pack_blocks(tokens, tokenizer.eos_token_id, block, keep_last)
    return {"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks], "labels": [list(b) for b in blocks]}


def build_datasets(tokenizer: Any, cfg: RunConfig, task: TaskData) -> dict[str, Any]:
    """Tokenized train / validation / test splits (``datasets.Dataset``) of ``task``. Classification and
    generation splits keep their raw ``text`` and ``label`` columns too, for generation scoring."""
    from datasets import Dataset

    data = cfg.data
    out = {}
    for name, split in task.splits.items():
        limit = data.max_train_samples if name == "train" else data.max_eval_samples
        texts, labels = split.texts[:limit], split.labels[:limit]
        if data.format == "language_modeling":
            out[name] = Dataset.from_dict(_language_modeling(tokenizer, texts, data.max_length, name != "train"))
            continue
        if data.format == "generation":
            encoded = _generation(tokenizer, data.dataset, task.label_names, texts, labels, data.max_length)
        else:
            pairs = split.pairs[:limit] if split.pairs is not None else None
            encoded = _classification(tokenizer, texts, pairs, labels, data.max_length)
        out[name] = Dataset.from_dict({**encoded, "text": texts, "label": labels})
    return out


def model_columns(dataset: Any) -> Any:
    """The dataset without the raw columns the model does not take."""
    return dataset.remove_columns([c for c in ("text", "label") if c in dataset.column_names])


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


def macro_f1(predicted: np.ndarray, gold: np.ndarray) -> float:
    """Unweighted mean over the classes that occur in ``gold`` or ``predicted`` of F1 = 2TP / (2TP + FP + FN)."""
    scores = []
    for c in np.union1d(predicted, gold):
        tp = int(np.sum((predicted == c) & (gold == c)))
        wrong = int(np.sum(predicted == c) + np.sum(gold == c)) - 2 * tp
        scores.append(2 * tp / (2 * tp + wrong))
    return float(np.mean(scores)) if scores else 0.0


def classification_accuracy(prediction: Any) -> dict[str, float]:
    """compute_metrics for the Trainer: accuracy (argmax equal to the label) and macro-F1."""
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    predicted = np.argmax(logits, axis=-1)
    gold = np.asarray(prediction.label_ids)
    return {"accuracy": float((predicted == gold).mean()), "macro_f1": macro_f1(predicted, gold)}


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode while inside, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def by_length(lengths: Sequence[int]) -> list[int]:
    """Row indices from shortest to longest (stable): evaluation batches of similar lengths waste
    little compute on padding (about 40% less on Rotten Tomatoes). The metrics are sums over rows, so
    the order does not change them."""
    return sorted(range(len(lengths)), key=lengths.__getitem__)


@torch.no_grad()
def mean_token_loss(
    model: nn.Module, dataset: Any, pad_token_id: int, batch_size: int = 32, description: str = "token loss"
) -> float:
    """Mean next-token cross-entropy over every labelled token of ``dataset`` (input_ids /
    attention_mask / labels with -100 for unscored positions): token-weighted, not a mean of batch means.
    Shows a progress bar named ``description``."""
    from tqdm.auto import tqdm

    collate = GenerationCollator(pad_token_id)
    device = next(model.parameters()).device
    order = by_length([len(ids) for ids in dataset["input_ids"]])
    total, count = 0.0, 0
    with evaluating(model):
        for start in tqdm(range(0, len(dataset), batch_size), desc=description, unit="batch", leave=False):
            rows = [dataset[i] for i in order[start : start + batch_size]]
            batch = {k: v.to(device) for k, v in collate(rows).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = batch["labels"][:, 1:]
            losses = nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += float(losses)
            count += int((targets != IGNORE_INDEX).sum())
    return total / max(1, count)


def words_of(text: str) -> list[str]:
    """The words of ``text``, lower-cased: runs of letters or of digits (punctuation and spaces split them)."""
    return re.findall(r"[a-z]+|[0-9]+", text.lower())


def answer_matches(generated: str, name: str) -> bool:
    """Exact match: the generated text starts with the label name's words."""
    expected = words_of(name)
    return bool(expected) and words_of(generated)[: len(expected)] == expected


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
    names: list[str],
    texts: list[str],
    labels: list[int],
    max_length: int,
    batch_size: int = 32,
) -> float:
    """Exact-match accuracy of the greedily generated answer against the label name (``answer_matches``;
    prompts built and truncated exactly as in training)."""
    new_tokens = max(len(answer_ids(tokenizer, n)) for n in names)
    device = next(model.parameters()).device
    prompts = [prompt_ids(tokenizer, dataset, t, max_length - new_tokens) for t in texts]
    order = by_length([len(p) for p in prompts])
    correct = 0
    with evaluating(model):
        for start in range(0, len(texts), batch_size):
            rows = [prompts[i] for i in order[start : start + batch_size]]
            batch = {k: v.to(device) for k, v in _left_padded(rows, tokenizer.pad_token_id).items()}
            generated = model.generate(  # type: ignore[operator]
                **batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            answers = tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            gold = [labels[i] for i in order[start : start + batch_size]]
            correct += sum(answer_matches(a, names[y]) for a, y in zip(answers, gold, strict=True))
    return correct / max(1, len(texts))
