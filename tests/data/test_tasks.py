"""adarank/data/tasks.py: evaluation batches ordered by length give the same metrics, without autograd; exact
match generates only where the teacher-forced predictions do not already show greedy's answer."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_bert, tiny_config
from datasets import Dataset
from transformers import AutoTokenizer, LlamaForCausalLM

from adarank import inject_adapters
from adarank.data import default_model_path
from adarank.data.tasks import IGNORE_INDEX, GenerationCollator
from adarank.training.batches import only_scored_logits
from adarank.training.evaluate import by_length, exact_match, forced_answers, mean_token_loss, scored_pass


def test_by_length_orders_shortest_first_keeping_ties_in_order() -> None:
    assert by_length([3, 1, 2, 1, 3]) == [1, 3, 2, 0, 4]
    assert by_length([]) == []


def _rows(count: int) -> list[dict[str, list[int]]]:
    """Prompt + answer rows of different lengths; only the last 1-2 tokens are scored."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for i in range(count):
        ids = torch.randint(5, 90, (4 + (7 * i) % 11,), generator=generator).tolist()
        scored = 1 + i % 2
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                     "labels": [IGNORE_INDEX] * (len(ids) - scored) + ids[-scored:]})  # fmt: skip
    return rows


def test_mean_token_loss_is_the_token_weighted_mean_in_any_order_and_builds_no_graph() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(True, vocab_size=100, max_position_embeddings=64, num_key_value_heads=1))
    model.train()
    rows = _rows(9)
    total, count = 0.0, 0
    with torch.no_grad():  # one row at a time, no padding: the reference
        model.eval()
        for row in rows:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1]
            targets = torch.tensor(row["labels"][1:])
            keep = targets != IGNORE_INDEX
            total += float(torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum"))
            count += int(keep.sum())
        model.train()
    grad_modes: list[bool] = []
    model.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    found = mean_token_loss(model, Dataset.from_list(rows), pad_token_id=0, batch_size=4)
    shuffled = mean_token_loss(model, Dataset.from_list(rows[::-1]), pad_token_id=0, batch_size=3)
    assert math.isclose(found, total / count, rel_tol=1e-5) and math.isclose(shuffled, found, rel_tol=1e-5)
    assert grad_modes == [False] * (3 + 3) and model.training  # 9 rows in batches of 4, then of 3; mode restored


class _NoKeep(torch.nn.Module):
    """The model behind a forward without ``logits_to_keep`` (as PEFT's wrapper): full logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **inputs: torch.Tensor) -> object:
        return self.model(**inputs)


def test_scored_pass_predicts_each_scored_token_with_or_without_logits_to_keep() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(True, vocab_size=100, max_position_embeddings=64, num_key_value_heads=1))
    rows = _rows(9)
    expected = []
    with torch.no_grad():
        for row in rows:
            argmax = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1].argmax(-1)
            expected.append([int(a) for a, t in zip(argmax, row["labels"][1:], strict=True) if t != IGNORE_INDEX])
    head_rows: list[int] = []
    model.lm_head.register_forward_hook(lambda _m, args, _o: head_rows.append(args[0].shape[:-1].numel()))
    loss, predicted = scored_pass(model, Dataset.from_list(rows), pad_token_id=0, batch_size=4)
    order = by_length([len(row["input_ids"]) for row in rows])  # rows are batched shortest first
    scored = [1 + i % 2 for i in order]
    assert head_rows == [sum(scored[:4]), sum(scored[4:8]), sum(scored[8:])] == [5, 6, 2]  # scored tokens alone
    full_loss, full_predicted = scored_pass(_NoKeep(model), Dataset.from_list(rows), pad_token_id=0, batch_size=4)
    assert predicted == expected == full_predicted and [len(p) for p in predicted] == [1, 2] * 4 + [1]
    assert math.isclose(loss, full_loss, rel_tol=1e-6) and math.isclose(
        loss, mean_token_loss(model, Dataset.from_list(rows), 0), rel_tol=1e-6
    )


def _gradients(model: torch.nn.Module, batch: dict, **loss_kwargs: object) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch, **loss_kwargs).loss
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_only_scored_logits_gives_the_models_own_loss_and_gradients_from_the_scored_positions_alone() -> None:
    """Right-padded rows of different lengths, one with two scored spans (a packed row): the same loss
    and gradients as every logit, with and without the Trainer's item count; the head sees one row per
    scored token and nothing else."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(True, vocab_size=100, max_position_embeddings=64, num_key_value_heads=1))
    adapters = inject_adapters(model, ["all-linear"], rank=2, alpha=4, seed=0, modules_to_save=[])
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.singular_values.fill_(0.5)  # so the loss reaches P and Q
    rows = _rows(5)
    rows[4]["labels"][1:3] = rows[4]["input_ids"][1:3]  # a second scored span early in the row
    batch = GenerationCollator(0)([{k: torch.tensor(v) for k, v in r.items()} for r in rows])
    scored = sum(sum(label != IGNORE_INDEX for label in r["labels"][1:]) for r in rows)
    assert scored == 1 + 2 + 1 + 2 + (1 + 2)
    head_inputs: list[tuple[int, ...]] = []
    model.lm_head.register_forward_hook(lambda _m, inputs, _o: head_inputs.append(tuple(inputs[0].shape)))
    model.train()
    for loss_kwargs in ({}, {"num_items_in_batch": torch.tensor(scored + 3)}):
        all_loss, all_grads = _gradients(model, batch, **loss_kwargs)
        kept = only_scored_logits(model, batch)
        scored_loss, scored_grads = _gradients(model, kept, **loss_kwargs)
        assert math.isclose(scored_loss, all_loss, rel_tol=1e-6)
        assert scored_grads.keys() == all_grads.keys() and len(all_grads) == 14 * 3  # 14 adapters x (P, lambda, Q)
        for name, grad in all_grads.items():
            torch.testing.assert_close(scored_grads[name], grad, atol=1e-7, rtol=1e-5, msg=name)
    width, most = batch["input_ids"].shape[1], 3  # row 4 has the most scored tokens: 1 + 2
    assert head_inputs == [(5, width, 32), (5, most, 32)] * 2  # the head: each row's scored positions, padded
    kept_labels = kept["shift_labels"].tolist()
    assert [t for row in kept_labels for t in row if t != IGNORE_INDEX] == [
        t for r in rows for t in r["labels"][1:] if t != IGNORE_INDEX
    ]
    assert sum(t == IGNORE_INDEX for row in kept_labels for t in row) == 5 * most - scored  # the padding only
    assert kept["logits_to_keep"].dtype == torch.int64 and kept["logits_to_keep"].shape == (5, most)


def test_only_scored_logits_leaves_batches_it_cannot_shorten_alone() -> None:
    """No labels, a classifier's label per row, a model whose forward does not slice its head (a
    wrapper, as PEFT's): the same batch back, so the model computes every logit as before."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(True, vocab_size=100, max_position_embeddings=64, num_key_value_heads=1))
    rows = GenerationCollator(0)([{k: torch.tensor(v) for k, v in r.items()} for r in _rows(3)])
    unlabelled = {k: v for k, v in rows.items() if k != "labels"}
    assert only_scored_logits(model, unlabelled) is unlabelled
    assert only_scored_logits(_NoKeep(model), rows) is rows
    classifier = tiny_bert()
    by_row = {"input_ids": rows["input_ids"], "labels": torch.tensor([0, 1, 0])}
    assert only_scored_logits(classifier, by_row) is by_row
    assert set(only_scored_logits(model, rows)) == {*rows, "logits_to_keep", "shift_labels"}


@pytest.fixture(scope="module")
def greedy_lm() -> tuple[LlamaForCausalLM, object]:
    """A tiny random Llama with MiniLM's tokenizer; end of sequence [SEP]."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(3)
    config = tiny_config(True, vocab_size=tokenizer.vocab_size, max_position_embeddings=64, num_key_value_heads=1)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.sep_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def test_forced_answers_skip_generation_exactly_where_greedy_would_write_the_reference(greedy_lm) -> None:
    """Rows whose reference is the model's own greedy continuation need no generate(); every other row
    (a wrong token, a prompt shortened unlike the input, an answer that ends unscored early) does, and
    exact match is the same with and without the shortcut."""
    model, tokenizer = greedy_lm
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2000, 9000, (4 + i % 5,), generator=generator).tolist() for i in range(10)]
    greedy = []
    for prompt in prompts:
        out = model.generate(torch.tensor([prompt]), max_new_tokens=3, do_sample=False)
        greedy.append(out[0, len(prompt) :].tolist())
    # the stop token for one row: its second greedy token ends generation there (and wherever else it comes)
    model.generation_config.eos_token_id = [tokenizer.sep_token_id, greedy[8][1]]
    greedy = [
        model.generate(torch.tensor([p]), max_new_tokens=3, do_sample=False)[0, len(p) :].tolist() for p in prompts
    ]
    assert len(greedy[8]) == 2
    other = [t + 1 if t + 1 not in (tokenizer.sep_token_id, greedy[8][1]) else t + 2 for t in greedy[6]]
    answers = (
        greedy[:4]
        + [greedy[4][:2] + [tokenizer.sep_token_id]]
        + [greedy[5][:1]]
        + [other, greedy[7]]
        + [greedy[8], greedy[9]]
    )
    rows = {
        "input_ids": [p + a for p, a in zip(prompts, answers, strict=True)],
        "labels": [[IGNORE_INDEX] * len(p) + a for p, a in zip(prompts, answers, strict=True)],
        "prompt_ids": prompts[:9] + [[prompts[9][0] + 1] + prompts[9][1:]],  # row 9 generates from another prompt
    }
    rows["labels"][7][-1] = IGNORE_INDEX  # row 7's last answer token is unscored: nothing shows what follows
    references = [tokenizer.decode(a[:2]) for a in answers]
    dataset = Dataset.from_dict({**rows, "attention_mask": [[1] * len(r) for r in rows["input_ids"]]})
    _, predictions = scored_pass(model, dataset.remove_columns("prompt_ids"), tokenizer.pad_token_id, batch_size=4)
    known = forced_answers(model, tokenizer, rows, predictions, max_new_tokens=3)
    # 0-3 greedy; 4 greedy for 2 tokens then [SEP] where greedy goes on; 5 ends after one token without a
    # stop; 6 a token greedy does not choose; 7 unscored end; 8 greedy up to its stop token; 9 prompt differs
    assert [k is not None for k in known] == [True] * 4 + [False] * 4 + [True, False]
    assert known[0] == tokenizer.decode(greedy[0], skip_special_tokens=True)
    generated = [tokenizer.decode(g, skip_special_tokens=True) for g in greedy]
    assert [k for k in known if k is not None] == [generated[i] for i in (0, 1, 2, 3, 8)]
    with_known = exact_match(model, tokenizer, rows["prompt_ids"], references, 3, batch_size=4, known=known)
    without = exact_match(model, tokenizer, rows["prompt_ids"], references, 3, batch_size=4)
    assert with_known == without and with_known[1][:9] == generated[:9]
    config = model.generation_config
    config.repetition_penalty = 1.3  # greedy then is not the argmax: generate() decides
    assert forced_answers(model, tokenizer, rows, predictions, max_new_tokens=3) == [None] * 10
    config.repetition_penalty = None
    config.some_later_processor = 2  # a field this code does not know: unknown means generate()
    assert forced_answers(model, tokenizer, rows, predictions, max_new_tokens=3) == [None] * 10
    del config.some_later_processor
    before = config.temperature, config.top_p, config.max_length
    config.temperature, config.top_p, config.max_length = 0.2, 0.9, 7  # sampling knobs, lengths: greedy as before
    assert forced_answers(model, tokenizer, rows, predictions, max_new_tokens=3) == known
    config.temperature, config.top_p, config.max_length = before
