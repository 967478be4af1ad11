"""What scoring a generation run's test split costs, the way adarank scores it now against the way it did
before: one forward pass for the answer loss and the teacher-forced predictions, then generate() only for
the rows whose prediction leaves the reference (``forced_answers``), against a forward with logits at
every position and generate() for every row. Same model, adapter and rows, one process; prints one JSON
line with both paths' exact match, loss, seconds, and whether every generated text is the same.

python benchmarks/eval_cost.py RUN_DIR [--rows N]   # RUN_DIR: a finished `adarank train` generation run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarank.checks import load_config
from adarank.core.export import load_adapter
from adarank.data import load_task
from adarank.data.tasks import IGNORE_INDEX, GenerationCollator, answer_tokens, build_datasets, model_columns
from adarank.io.models import load_model
from adarank.training.evaluate import by_length, evaluating, exact_match, forced_answers, scored_pass


@torch.no_grad()
def full_logits_loss(model: nn.Module, rows: Any, pad: int, batch: int) -> float:
    """The answer loss as adarank computed it before: logits at every position of every row."""
    collate = GenerationCollator(pad)
    order = by_length([len(ids) for ids in rows["input_ids"]])
    total, count = 0.0, 0
    with evaluating(model):
        for start in range(0, len(rows), batch):
            inputs = collate([rows[i] for i in order[start : start + batch]])
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1]
            targets = inputs["labels"][:, 1:]
            total += float(
                nn.functional.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]),
                    targets.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
            )
            count += int((targets != IGNORE_INDEX).sum())
    return total / max(1, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--rows", type=int, default=160, help="the first N test rows")
    args = parser.parse_args()
    cfg = load_config(args.run / "config.yaml")
    task = load_task(cfg.data)
    tokenizer, model, _ = load_model(cfg.model, True, 2)
    load_adapter(model, args.run / "adapter")
    data = build_datasets(tokenizer, cfg, task)
    rows = data["test"].select(range(min(args.rows, len(data["test"]))))
    answer = answer_tokens(tokenizer, cfg.data, task)
    if not answer:
        parser.error(f"{args.run} scores no exact match (data.max_answer_tokens is unset)")
    pad, batch = tokenizer.pad_token_id, cfg.train.eval_batch_size
    prompts, references = [list(p) for p in rows["prompt_ids"]], list(rows["reference"])

    start = time.perf_counter()
    before_loss = full_logits_loss(model, model_columns(rows), pad, batch)
    middle = time.perf_counter()
    before_match, before_texts = exact_match(model, tokenizer, prompts, references, answer, batch)
    before = {"loss": before_loss, "exact_match": before_match, "loss_s": middle - start,
              "match_s": time.perf_counter() - middle}  # fmt: skip

    start = time.perf_counter()
    loss, predictions = scored_pass(model, model_columns(rows), pad, batch)
    middle = time.perf_counter()
    known = forced_answers(model, tokenizer, rows, predictions, answer)
    match, texts = exact_match(model, tokenizer, prompts, references, answer, batch, known)
    now = {"loss": loss, "exact_match": match, "generated_rows": sum(k is None for k in known),
           "loss_s": middle - start, "match_s": time.perf_counter() - middle}  # fmt: skip
    seconds = (now["loss_s"] + now["match_s"]) / (before["loss_s"] + before["match_s"])
    print(json.dumps({"run": str(args.run), "rows": len(rows), "answer_tokens": answer, "before": before,
                      "now": now, "same_texts": texts == before_texts, "time_ratio": round(seconds, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
