"""What a training step of a generation run costs with the output head on the scored positions only
(``only_scored_logits``, what adarank's Trainer and loop do now) against logits at every position (what
they did before, and what a model's plain forward does). Same model, adapters, batches and loss, one
process, the two paths interleaved step by step; prints one JSON line with each path's median forward +
backward seconds, their ratio, and the largest differences in loss and gradients between them.

python benchmarks/train_step_cost.py [CONFIG] [--steps N] [key=value ...]
    # CONFIG default studies/configs/rt-smollm2-curve.yaml (SmolLM2, all 210 linears, batch 8)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from adarank.checks import load_config
from adarank.data import load_task
from adarank.data.tasks import GenerationCollator, build_datasets, training_rows
from adarank.training.batches import only_scored_logits
from adarank.training.setup import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default="studies/configs/rt-smollm2-curve.yaml")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per path (one warm-up step first)")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    if cfg.data.format != "generation":
        parser.error(f"{args.config} is not a generation run (data.format={cfg.data.format})")
    task = load_task(cfg.data)
    tokenizer, model, _ = prepare(cfg, task.label_names)
    rows = training_rows(build_datasets(tokenizer, cfg, task)["train"], cfg.data)
    collate = GenerationCollator(tokenizer.pad_token_id)
    size = cfg.train.batch_size
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step(batch: dict, scored: bool, seed: int) -> tuple[float, float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)  # the same dropout masks on both paths
        start = time.perf_counter()
        loss = model(**(only_scored_logits(model, batch) if scored else batch)).loss
        loss.backward()
        elapsed = time.perf_counter() - start
        return elapsed, float(loss.detach()), [p.grad.clone() for p in trainable if p.grad is not None]

    seconds: dict[str, list[float]] = {"all_logits": [], "scored_logits": []}
    loss_gap = grad_gap = 0.0
    kept = total = 0
    for i in range(args.steps + 1):  # step 0 warms up
        batch = collate([rows[j] for j in range(i * size, (i + 1) * size)])
        all_s, all_loss, all_grads = step(batch, False, i)
        scored_s, scored_loss, scored_grads = step(batch, True, i)
        loss_gap = max(loss_gap, abs(all_loss - scored_loss))
        grad_gap = max([grad_gap] + [float((a - b).abs().max()) for a, b in zip(all_grads, scored_grads, strict=True)])
        if i:
            seconds["all_logits"].append(all_s)
            seconds["scored_logits"].append(scored_s)
            kept += int((only_scored_logits(model, batch)["shift_labels"] != -100).sum())
            total += int(batch["input_ids"].numel())
    medians = {k: round(statistics.median(v), 3) for k, v in seconds.items()}
    print(json.dumps({
        "config": args.config, "batch_size": size, "steps": args.steps, "threads": torch.get_num_threads(),
        "positions_scored": f"{kept} of {total}", "median_step_s": medians,
        "time_ratio": round(medians["scored_logits"] / medians["all_logits"], 3),
        "max_loss_difference": loss_gap, "max_grad_difference": grad_gap,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
