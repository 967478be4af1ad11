"""Evaluating a model on a run's splits: a classifier's accuracy, macro-F1 and loss, a generation
format's answer loss and exact match (one forward pass gives the loss and shows which rows greedy
decoding answers with the reference; only the others are generated: ``scored_pass``,
``forced_answers``), a language model's loss and perplexity per token."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from adarank.config import RunConfig
from adarank.data.splits import TaskData
from adarank.data.tasks import IGNORE_INDEX, GenerationCollator, answer_tokens, model_columns
from adarank.training.batches import _head_takes_row_masks, scored_mask


def evaluate_splits(
    model: nn.Module,
    classify: Any,
    tokenizer: Any,
    cfg: RunConfig,
    task: TaskData,
    data: dict,
    splits: tuple[str, ...],
) -> dict[str, float]:
    """The format's metrics on each of ``splits``, keyed `<split>_<metric>`: accuracy and macro_f1
    (classification, from ``classify(split)``), accuracy by exact match and answer_loss (generation),
    loss and perplexity (language_modeling)."""
    pad, batch = tokenizer.pad_token_id, cfg.train.eval_batch_size
    out: dict[str, float] = {}
    for split in splits:
        if cfg.data.format == "classification":
            scores = classify(split)
            out[f"{split}_accuracy"] = float(scores["accuracy"])
            out[f"{split}_macro_f1"] = float(scores["macro_f1"])
        elif cfg.data.format == "generation":
            rows = data[split]
            loss, predictions = scored_pass(model, model_columns(rows), pad, batch, f"{split} loss")
            out[f"{split}_loss"] = loss
            out[f"{split}_perplexity"] = float(math.exp(min(loss, 700.0)))
            out[f"{split}_answer_loss"] = loss  # the same loss, under its earlier name
            answer = answer_tokens(tokenizer, cfg.data, task)
            if answer:
                prompts, references = [list(p) for p in rows["prompt_ids"]], list(rows["reference"])
                known = forced_answers(model, tokenizer, rows, predictions, answer)
                accuracy, _ = exact_match(model, tokenizer, prompts, references, answer, batch, known)
                out[f"{split}_accuracy"] = accuracy
        else:
            loss = mean_token_loss(model, data[split], pad, batch, f"{split} loss")
            out[f"{split}_loss"] = loss
            out[f"{split}_perplexity"] = float(math.exp(min(loss, 700.0)))
    return out


@torch.no_grad()
def classify_split(
    model: nn.Module,
    dataset: Any,
    collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
) -> dict[str, float]:
    """Accuracy, macro-F1 and mean cross-entropy (``loss``) of a classifier on every row of ``dataset``
    (with `labels`). Under FSDP2 every process must call it on the same rows: the forward passes gather
    the shards."""
    import numpy as np

    device = next(model.parameters()).device
    predicted, gold, loss = [], [], 0.0
    with evaluating(model):
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            labels = batch.pop("labels")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            loss += float(nn.functional.cross_entropy(logits.float().cpu(), labels, reduction="sum"))
            predicted.append(logits.argmax(-1).cpu().numpy())
            gold.append(labels.numpy())
    p, g = np.concatenate(predicted), np.concatenate(gold)
    return {"accuracy": float((p == g).mean()), "macro_f1": macro_f1(p, g), "loss": loss / max(1, len(g))}


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
def scored_pass(
    model: nn.Module, dataset: Any, pad_token_id: int, batch_size: int = 32, description: str = "token loss"
) -> tuple[float, list[list[int]]]:
    """One forward over ``dataset`` (input_ids / attention_mask / labels with -100 for unscored positions):
    the mean next-token cross-entropy over every labelled token (token-weighted, not a mean of batch
    means), and for each row the model's argmax prediction of each of its labelled tokens, in order
    (what greedy decoding would choose there, given the reference before it). Shows a progress bar
    named ``description``."""
    from tqdm.auto import tqdm

    collate = GenerationCollator(pad_token_id)
    device = next(model.parameters()).device
    order = by_length([len(ids) for ids in dataset["input_ids"]])
    predictions: list[list[int]] = [[] for _ in range(len(dataset))]
    row_masks = _head_takes_row_masks(model)
    total, count = 0.0, 0
    with evaluating(model):
        for start in tqdm(range(0, len(dataset), batch_size), desc=description, unit="batch", leave=False):
            chunk = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate([dataset[i] for i in chunk]).items()}
            keep, shifted = scored_mask(batch["labels"])
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            # one row of logits per scored token, row by row in order (the head runs on those alone)
            logits = model(**inputs, logits_to_keep=keep).logits if row_masks else model(**inputs).logits[keep]
            total += float(nn.functional.cross_entropy(logits.float(), shifted[keep], reduction="sum"))
            per_row = keep.sum(dim=1).tolist()
            count += sum(per_row)
            argmax = logits.argmax(dim=-1).cpu().split(per_row)
            for index, predicted in zip(chunk, argmax, strict=True):
                predictions[index] = predicted.tolist()
    return total / max(1, count), predictions


def mean_token_loss(
    model: nn.Module, dataset: Any, pad_token_id: int, batch_size: int = 32, description: str = "token loss"
) -> float:
    """Mean next-token cross-entropy over every labelled token of ``dataset`` (``scored_pass``'s loss)."""
    return scored_pass(model, dataset, pad_token_id, batch_size, description)[0]


# generation settings that cannot change which tokens greedy decoding (do_sample=False) writes: token ids
# (end-of-sequence is the stop set below), lengths (max_new_tokens is passed), sampling-only and
# beam-only knobs, what generate() returns, caching and compilation, metadata. Any other field that differs
# from transformers' defaults (a repetition penalty, suppressed tokens, assisted decoding, a field of a
# later transformers release) turns the shortcut off: unknown means generate().
_GREEDY_NEUTRAL = frozenset({
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "max_length", "max_new_tokens",
    "do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
    "length_penalty", "early_stopping", "diversity_penalty", "use_cache", "cache_implementation", "cache_config",
    "max_cache_len", "output_attentions", "output_hidden_states", "output_scores", "output_logits",
    "return_dict_in_generate", "compile_config", "disable_compile", "low_memory", "prefill_chunk_size",
    "_from_model_config", "transformers_version",
})  # fmt: skip


def _greedy_stops(model: nn.Module) -> set[int] | None:
    """The tokens that end greedy generation (the generation config's end-of-sequence ids), or None when
    the config sets anything that may change what greedy decoding picks (any field outside
    ``_GREEDY_NEUTRAL`` that differs from transformers' default) or there is none: then only
    generate() can say what the model writes."""
    config = getattr(model, "generation_config", None)
    if config is None or not hasattr(config, "to_diff_dict") or set(config.to_diff_dict()) - _GREEDY_NEUTRAL:
        return None
    eos = config.eos_token_id
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


def forced_answers(
    model: nn.Module, tokenizer: Any, rows: Any, predictions: Sequence[Sequence[int]], max_new_tokens: int
) -> list[str | None]:
    """For each generation row, the text greedy generation from its prompt (``prompt_ids``) would write,
    where the teacher-forced predictions (``scored_pass``) already show it, else None.

    Where the model's argmax at each of the first ``max_new_tokens`` answer tokens is the reference token,
    greedy decoding writes exactly those tokens (each step sees the same tokens before it), stopping early
    at an end-of-sequence token: so generate() is needed only for the rows whose prediction leaves the
    reference somewhere (the wrong answers), which saves most of exact match's cost on a trained model.
    Rows whose prompt is not the start of their input (a prompt shortened differently), whose answer ends
    unscored before ``max_new_tokens`` without an end-of-sequence token, or a model whose generation
    config changes greedy choices: None (generate() decides)."""
    stops = _greedy_stops(model)
    answers: list[str | None] = [None] * len(predictions)
    if stops is None:
        return answers
    pads_vanish = tokenizer.pad_token_id in tokenizer.all_special_ids  # a finished row's padding decodes to ""
    for i, (ids, labels, prompt) in enumerate(zip(rows["input_ids"], rows["labels"], rows["prompt_ids"], strict=True)):
        n = len(prompt)
        if n == 0 or list(ids[:n]) != list(prompt):
            continue
        written: list[int] = []
        ended = False
        for token, label in zip(ids[n : n + max_new_tokens], labels[n : n + max_new_tokens], strict=False):
            if label != token:  # an unscored continuation: the predictions do not cover it
                break
            written.append(token)
            if token in stops:
                ended = True
                break
        if not written or not (ended and pads_vanish or len(written) == max_new_tokens):
            continue
        first = sum(1 for label in labels[1:n] if label != IGNORE_INDEX)  # scored tokens before the answer
        if list(predictions[i][first : first + len(written)]) == written:
            answers[i] = tokenizer.decode(written, skip_special_tokens=True)
    return answers


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
def exact_match(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    references: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 32,
    known: Sequence[str | None] | None = None,
) -> tuple[float, list[str]]:
    """Exact-match accuracy of the greedily generated answers against the references
    (``answer_matches``), and the generated texts in the prompts' order. ``known``: texts already known
    for some rows (``forced_answers``), None for the rows to generate."""
    device = next(model.parameters()).device
    known = list(known) if known is not None else [None] * len(prompts)
    generated_texts = [text or "" for text in known]
    order = [i for i in by_length([len(p) for p in prompts]) if known[i] is None]
    with evaluating(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = {
                k: v.to(device)
                for k, v in _left_padded([list(prompts[i]) for i in chunk], tokenizer.pad_token_id).items()
            }
            generated = model.generate(  # type: ignore[operator]
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            answers = tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, answer in zip(chunk, answers, strict=True):
                generated_texts[i] = answer
    correct = sum(answer_matches(g, r) for g, r in zip(generated_texts, references, strict=True))
    return correct / max(1, len(prompts)), generated_texts
