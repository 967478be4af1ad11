"""Instruction and chat fine-tuning from the user's data (issue 21): the loss mask token by token on a
3-exchange conversation, truncation that keeps the prompt's end and counts cut responses, packing,
bad conversations named by row, a tokenizer without a chat template, and prompt / response and chat
jsonl files trained end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import save_tiny_model
from transformers import AutoTokenizer

from adarank.cli import main
from adarank.config import DataConfig
from adarank.data import Split, load_task
from adarank.data.tasks import IGNORE_INDEX, encode_chat, encode_generation, encode_pair, pack_rows

TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "answer briefly"},
    {"role": "user", "content": "capital of france"},
    {"role": "assistant", "content": "paris"},
    {"role": "user", "content": "and of italy"},
    {"role": "assistant", "content": "rome it is"},
    {"role": "user", "content": "spain"},
    {"role": "assistant", "content": "madrid"},
]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llama")
    save_tiny_model(folder, llama=True)
    return folder


@pytest.fixture(scope="module")
def tokenizer(llama: Path):
    tok = AutoTokenizer.from_pretrained(llama)
    tok.chat_template = TEMPLATE
    return tok


def test_the_loss_covers_every_assistant_turn_token_by_token_and_nothing_else(tokenizer) -> None:
    encoded = encode_chat(tokenizer, CONVERSATION, max_length=256)
    assert not encoded.truncated and not encoded.cut
    ids, labels = encoded.input_ids, encoded.labels
    assert len(ids) == len(labels)
    spans, start = [], None  # the labelled stretches, each must equal the input at those positions
    for position, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = position
        if label == IGNORE_INDEX and start is not None:
            spans.append((start, position))
            start = None
    assert all(labels[i] == ids[i] for a, b in spans for i in range(a, b))
    texts = [tokenizer.decode(ids[a:b]) for a, b in spans]
    assert texts == ["paris [SEP]", "rome it is [SEP]", "madrid [SEP]"]  # each reply and its end-of-turn marker
    unlabelled = tokenizer.decode([t for t, y in zip(ids, labels, strict=True) if y == IGNORE_INDEX])
    for message in CONVERSATION:
        assert (message["content"] in unlabelled) == (message["role"] != "assistant"), message
    # exact match generates from the conversation up to its last reply, with the generation prompt
    assert tokenizer.decode(encoded.prompt).endswith("< user > spain [SEP] < assistant >")
    assert encoded.reference == "madrid"


def test_too_long_a_conversation_keeps_its_end_and_counts_the_cut_reply(tokenizer) -> None:
    whole = encode_chat(tokenizer, CONVERSATION, max_length=256)
    first_reply_end = next(i for i in range(len(whole.labels)) if whole.labels[i] != IGNORE_INDEX) + 1
    drop = first_reply_end  # the first reply's first token falls off
    short = encode_chat(tokenizer, CONVERSATION, max_length=len(whole.input_ids) - drop)
    assert short.truncated and short.cut
    assert short.input_ids == whole.input_ids[drop:] and short.labels == whole.labels[drop:]
    early = encode_chat(tokenizer, CONVERSATION, max_length=len(whole.input_ids) - 2)
    assert early.truncated and not early.cut  # only the system turn's start went


def test_a_long_prompt_loses_its_start_and_an_oversized_response_is_cut_and_counted(tokenizer) -> None:
    prompt = "Review: " + " ".join(f"word{i}" for i in range(60)) + "\nSentiment:"
    encoded = encode_pair(tokenizer, prompt, "positive", max_length=24)
    assert len(encoded.input_ids) <= 24 and encoded.truncated and not encoded.cut
    text = tokenizer.decode(encoded.input_ids)
    assert text.startswith("[CLS]")  # the tokenizer's leading special token is kept (its trailing one is not added)
    assert text.endswith("sentiment : positive [SEP]") and "word59" in text.replace(" ", "") and "word0 " not in text
    assert tokenizer.decode([y for y in encoded.labels if y != IGNORE_INDEX]) == "positive [SEP]"
    long = encode_pair(tokenizer, "Q:", " ".join(["answer"] * 40), max_length=16)
    assert long.cut and len(long.input_ids) == 16 and long.labels.count(IGNORE_INDEX) < 16


def test_packing_fills_rows_without_splitting_examples_and_keeps_every_label(tokenizer) -> None:
    split = Split(texts=[], prompts=[f"Q: item {i}" for i in range(10)], responses=["yes"] * 10)
    rows = encode_generation(
        tokenizer, DataConfig(format="generation", prompt_field="q", response_field="a"), split, []
    )
    packed = pack_rows([(r.input_ids, r.labels) for r in rows], max_length=32)
    assert len(packed["input_ids"]) < len(rows) and all(len(r) <= 32 for r in packed["input_ids"])
    assert sum(len(r) for r in packed["input_ids"]) == sum(len(r.input_ids) for r in rows)
    assert [y for r in packed["labels"] for y in r] == [y for r in rows for y in r.labels]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_conversations_are_named_by_row_all_at_once(tmp_path: Path, capsys) -> None:
    good = {"messages": CONVERSATION[1:3]}
    rows = [good] * 20 + [
        {"messages": [{"role": "user", "content": "hi"}]},  # row 21: no assistant turn
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},  # 22: empty
        {"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]},  # 23: no role
    ]
    file = _jsonl(tmp_path / "chats.jsonl", rows)
    data = DataConfig(dataset=str(file), format="generation", messages_field="messages", validation_fraction=0.0,
                      test_fraction=0.0)  # fmt: skip
    with pytest.raises(Exception) as refused:
        load_task(data)
    text = " ".join(str(refused.value).split())
    assert "no assistant turn (column `messages`) at `" in text and "chats.jsonl` row 21" in text
    assert "empty content" in text and "row 22" in text
    assert "without a text `role` and `content`" in text and "row 23" in text


def test_a_tokenizer_without_a_chat_template_is_a_clear_error_naming_the_key(
    llama: Path, tmp_path: Path, capsys
) -> None:
    file = _jsonl(tmp_path / "chats.jsonl", [{"messages": CONVERSATION}] * 30)
    out = tmp_path / "run"
    code = main(["train", f"model.name_or_path={llama}", f"data.dataset={file}", "data.format=generation",
                 "data.messages_field=messages", "adapter.target_modules=all-linear", f"output_dir={out}",
                 "train.max_steps=2", "wandb.mode=disabled"])  # fmt: skip
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "has no chat template" in err and "data.chat_template" in err
    assert not out.exists()


def test_chat_jsonl_trains_end_to_end_with_loss_perplexity_exact_match_and_samples(llama: Path, tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]}
            for w in ["yes", "no", "maybe"] * 12]  # fmt: skip
    file = _jsonl(tmp_path / "chats.jsonl", rows)
    out = tmp_path / "run"
    code = main(["train", f"model.name_or_path={llama}", f"data.dataset={file}", "data.format=generation",
                 "data.messages_field=messages", f"data.chat_template={TEMPLATE}", "data.max_answer_tokens=3",
                 "adapter.target_modules=all-linear", f"output_dir={out}", "train.max_steps=3", "train.batch_size=4",
                 "budget.init_rank=2", "budget.target_rank=1", "budget.t_init=1", "budget.t_final=1",
                 "budget.mask_interval=1", "wandb.mode=disabled"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("validation_loss", "test_loss", "validation_perplexity", "test_perplexity", "test_accuracy",
                "eval_accuracy_before", "test_loss_before"):  # fmt: skip
        assert key in metrics, key
    assert metrics["test_perplexity"] == pytest.approx(2.718281828 ** metrics["test_loss"], rel=1e-6)
    assert metrics["truncated_prompt_rows"] == metrics["cut_response_rows"] == 0
    page = (out / "report.html").read_text()
    assert "Generation samples" in page and page.count("<td><pre>") == 3 * 3


def test_prompt_response_pairs_with_a_template_train_end_to_end(llama: Path, tmp_path: Path) -> None:
    rows = [{"question": f"what is {i} plus one", "answer": str(i + 1), "topic": "math"} for i in range(40)]
    file = _jsonl(tmp_path / "qa.jsonl", rows)
    out = tmp_path / "run"
    code = main(["train", f"model.name_or_path={llama}", f"data.dataset={file}", "data.format=generation",
                 "data.prompt_template=Topic: {topic}\nQuestion: {question}\nAnswer:", "data.response_field=answer",
                 "data.packing=true", "adapter.target_modules=all-linear", f"output_dir={out}", "train.max_steps=2",
                 "budget.init_rank=1", "budget.target_rank=1", "budget.schedule=constant",
                 "wandb.mode=disabled"])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_loss"] > 0 and "test_accuracy" not in metrics  # no data.max_answer_tokens: no exact match


def test_a_template_naming_a_missing_column_is_refused_naming_it(llama: Path, tmp_path: Path, capsys) -> None:
    file = _jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}] * 20)
    code = main(["train", f"model.name_or_path={llama}", f"data.dataset={file}", "data.format=generation",
                 "data.prompt_template=Q: {question} ({lang})\\nA:", "data.response_field=answer",
                 "adapter.target_modules=all-linear", f"output_dir={tmp_path / 'run'}"])  # fmt: skip
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "data.prompt_template field `lang` is not a column" in err


def test_label_word_generation_equals_its_explicit_template(llama: Path) -> None:
    """The bundled Rotten Tomatoes generation task and the same task written as a template build the
    same examples (the configs use the template; their results are unchanged)."""
    from adarank.config import RunConfig
    from adarank.data.tasks import build_datasets

    tok = AutoTokenizer.from_pretrained(llama)
    implicit = DataConfig(format="generation", max_train_samples=50, max_eval_samples=20)
    explicit = DataConfig(format="generation", max_train_samples=50, max_eval_samples=20,
                          prompt_template="Review: {text}\nSentiment:", response_field="label")  # fmt: skip
    built = [build_datasets(tok, RunConfig(data=d), load_task(d)) for d in (implicit, explicit)]
    for split in ("train", "validation", "test"):
        for column in ("input_ids", "labels", "prompt_ids", "reference"):
            assert built[0][split][column] == built[1][split][column], (split, column)
    assert built[0]["test"]["reference"][0] in ("positive", "negative")
