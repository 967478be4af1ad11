"""Turn task splits into model inputs (classification, label-word generation, language modeling) and
score them.

Generation format: the causal LM reads a prompt and is trained to write the response, then
end-of-sequence; the loss covers the response tokens only (prompt positions get label -100). The prompt
is a template over the data's columns (label-word tasks: ``"<Field>: <text>\\n<Question>:"`` and the
label's name as the response) or a column; chat data is rendered with the tokenizer's chat template and
every assistant turn is learned. Too long an example loses the start of its prompt (the end, with the
question, is kept); a response that does not fit whole is cut and counted, never silently. Scored by
the mean loss of the response tokens (and perplexity) and, for short answers, by exact match: the first
words generated greedily must be the reference's words (lower case, punctuation ignored). One forward
pass gives the loss and shows which rows greedy decoding answers with the reference; only the others
are generated (``scored_pass``, ``forced_answers``).

Language-modeling format: each document's tokens, then end-of-sequence, concatenated and cut into
blocks of ``data.max_length``; the training split drops the last partial block, evaluation keeps it.
Loss and perplexity are per token over every evaluated token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adarank.config import DataConfig, RunConfig
from adarank.data.splits import Split, TaskData

IGNORE_INDEX = -100


def leading_specials(tokenizer: Any) -> list[int]:
    """The tokens the tokenizer adds before a text (a BOS; none for GPT-2-style ones), never after it:
    a prompt starts with them, and keeps them when it is truncated from the left."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def response_ids(tokenizer: Any, prompt: str, response: str) -> list[int]:
    """Token ids of the response, after a space when the prompt ends in a non-space and the response
    starts with one neither (`Sentiment:` + ` positive`), then end-of-sequence."""
    space = " " if prompt and not prompt[-1].isspace() and response and not response[0].isspace() else ""
    return tokenizer(space + response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def keep_end(ids: list[int], room: int, specials: int) -> list[int]:
    """At most ``room`` tokens of a prompt: its leading special tokens and the end of the rest."""
    if len(ids) <= room:
        return ids
    return ids[:specials] + ids[len(ids) - max(0, room - specials) :]


@dataclass
class Encoded:
    """One generation example: the model inputs, the prompt to generate from (exact match), the reference
    answer, and whether its prompt was shortened or a response cut to fit ``data.max_length``."""

    input_ids: list[int]
    labels: list[int]
    prompt: list[int]
    reference: str
    truncated: bool
    cut: bool


def encode_pair(tokenizer: Any, prompt: str, response: str, max_length: int, answer_room: int | None = None) -> Encoded:
    """Prompt + response ids, the loss on the response; the prompt loses its start when it does not fit
    (``answer_room``: tokens reserved for the answer, default this response's). A response longer than
    max_length - 1 loses its end (``cut``)."""
    prefix = leading_specials(tokenizer)
    specials = len(prefix)
    prompt_ids = prefix + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer = response_ids(tokenizer, prompt, response)
    cut = len(answer) > max_length - specials - 1
    if cut:
        answer = answer[: max_length - specials - 1]
    kept = keep_end(prompt_ids, max_length - max(len(answer), answer_room or 0), specials)
    generate_from = keep_end(prompt_ids, max_length - (answer_room or len(answer)), specials)
    truncated = len(kept) < len(prompt_ids)
    return Encoded(kept + answer, [IGNORE_INDEX] * len(kept) + answer, generate_from, response, truncated, cut)


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool, template: str | None) -> list[int]:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, chat_template=template
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_chat(
    tokenizer: Any, messages: list[dict[str, str]], max_length: int, template: str | None = None, answer_room: int = 0
) -> Encoded:
    """A conversation rendered with the chat template; the loss on every assistant turn (the tokens the
    template writes for it, its end-of-turn marker included), nowhere else. Too long, it loses its start
    (``truncated``); an assistant turn that loses tokens that way is ``cut``. The prompt for exact match is
    the conversation up to its last assistant turn, with the template's generation prompt.

    Raises:
        ValueError: the template does not render a conversation's start as the start of the whole (the
            assistant turns could not be found).
    """
    full = _render(tokenizer, messages, False, template)
    labels = [IGNORE_INDEX] * len(full)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt: list[int] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True, template) if i else []
        upto = _render(tokenizer, messages[: i + 1], False, template)
        if full[: len(before)] != before or full[: len(upto)] != upto:
            raise ValueError(
                "the chat template does not render a conversation's first turns as the start of the whole one, "
                "so the assistant turns cannot be located; give data.chat_template a template that does"
            )
        labels[len(before) : len(upto)] = full[len(before) : len(upto)]
        if i == last:
            prompt = before
    truncated = len(full) > max_length
    cut = False
    if truncated:  # keep the end; any response token dropped is counted
        drop = len(full) - max_length
        cut = any(label != IGNORE_INDEX for label in labels[:drop])
        full, labels = full[drop:], labels[drop:]
    reference = messages[last]["content"]
    return Encoded(full, labels, keep_end(prompt, max_length - answer_room, 0), reference, truncated, cut)


def _classification(
    tokenizer: Any, texts: list[str], pairs: list[str] | None, labels: list[int], max_length: int
) -> dict[str, list]:
    return {**tokenizer(texts, pairs, truncation=True, max_length=max_length), "labels": labels}


def encode_generation(tokenizer: Any, data: DataConfig, split: Split, label_names: list[str]) -> list[Encoded]:
    """Every example of a generation split: label-word and prompt / response pairs, or chats."""
    room: int | None = data.max_answer_tokens
    if split.messages is not None:
        return [encode_chat(tokenizer, m, data.max_length, data.chat_template, room or 0) for m in split.messages]
    assert split.prompts is not None and split.responses is not None
    if split.labels:  # the answer is a label's name: one room for all, the longest name's
        room = max(len(response_ids(tokenizer, split.prompts[0], n)) for n in label_names)
    return [
        encode_pair(tokenizer, p, r, data.max_length, room) for p, r in zip(split.prompts, split.responses, strict=True)
    ]


def answer_tokens(tokenizer: Any, data: DataConfig, task: TaskData) -> int | None:
    """Tokens generated for exact match: data.max_answer_tokens, or for a label-word task the longest
    label name's (with end-of-sequence); None = no exact match."""
    if data.max_answer_tokens:
        return data.max_answer_tokens
    train = task.splits["train"]
    if train.labels and train.prompts:
        return max(len(response_ids(tokenizer, train.prompts[0], n)) for n in task.label_names)
    return None


def pack_rows(rows: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int) -> dict[str, list]:
    """Examples (input ids, labels) packed in order into rows of at most ``max_length`` tokens (an example
    never split): less padding. Attention crosses the examples of a row; labels stay on each example's
    responses."""
    packed: list[tuple[list[int], list[int]]] = []
    for input_ids, labels in rows:
        if packed and len(packed[-1][0]) + len(input_ids) <= max_length:
            packed[-1][0].extend(input_ids)
            packed[-1][1].extend(labels)
        else:
            packed.append((list(input_ids), list(labels)))
    return {
        "input_ids": [ids for ids, _ in packed],
        "attention_mask": [[1] * len(ids) for ids, _ in packed],
        "labels": [labels for _, labels in packed],
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
            out[name] = _generation_dataset(tokenizer, data, split, task.label_names, limit)
            continue
        else:
            pairs = split.pairs[:limit] if split.pairs is not None else None
            encoded = _classification(tokenizer, texts, pairs, labels, data.max_length)
        out[name] = Dataset.from_dict({**encoded, "text": texts, "label": labels})
    return out


RAW_COLUMNS = ("text", "label", "prompt_ids", "reference", "truncated", "cut")


def _generation_dataset(tokenizer: Any, data: DataConfig, split: Split, names: list[str], limit: int | None) -> Any:
    """A generation split's Dataset: model inputs, and for scoring and counting the prompt ids, the
    reference answer, the raw text and whether the prompt lost its start (`truncated`) or a response
    lost tokens (`cut`). ``training_rows`` turns the train split into what the model trains on."""
    from datasets import Dataset

    head = _head(split, limit)
    rows = encode_generation(tokenizer, data, head, names)
    return Dataset.from_dict({
        "input_ids": [r.input_ids for r in rows],
        "attention_mask": [[1] * len(r.input_ids) for r in rows],
        "labels": [r.labels for r in rows],
        "prompt_ids": [r.prompt for r in rows],
        "reference": [r.reference for r in rows],
        "text": head.texts,
        "truncated": [int(r.truncated) for r in rows],
        "cut": [int(r.cut) for r in rows],
    })  # fmt: skip


def training_rows(dataset: Any, data: DataConfig) -> Any:
    """The train split as the model trains on it: model columns only; for generation without the rows
    that have no response token left (they teach nothing), packed with data.packing."""
    from datasets import Dataset

    if data.format == "generation":
        dataset = dataset.filter(lambda labels: any(x != IGNORE_INDEX for x in labels), input_columns="labels")
        if data.packing:
            rows = list(zip(dataset["input_ids"], dataset["labels"], strict=True))
            return Dataset.from_dict(pack_rows(rows, data.max_length))
    return model_columns(dataset)


def _head(split: Split, limit: int | None) -> Split:
    """The first ``limit`` examples of a split (all when None)."""
    if limit is None:
        return split
    cut = slice(0, limit)
    return Split(
        texts=split.texts[cut],
        labels=split.labels[cut],
        pairs=split.pairs[cut] if split.pairs is not None else None,
        prompts=split.prompts[cut] if split.prompts is not None else None,
        responses=split.responses[cut] if split.responses is not None else None,
        messages=split.messages[cut] if split.messages is not None else None,
    )


def model_columns(dataset: Any) -> Any:
    """The dataset without the raw columns the model does not take."""
    return dataset.remove_columns([c for c in RAW_COLUMNS if c in dataset.column_names])


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
