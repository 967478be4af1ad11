"""adarank/tasks.py: evaluation batches ordered by length give the same metrics, without autograd."""

from __future__ import annotations

import math

import torch
from conftest import tiny_config
from datasets import Dataset
from transformers import LlamaForCausalLM

from adarank.tasks import IGNORE_INDEX, by_length, mean_token_loss


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
