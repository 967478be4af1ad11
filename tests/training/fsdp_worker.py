"""Worker for the FSDP2 tests (launched by torchrun): adarank's own loop (``train_loop``) on a tiny
BERT with adapters of rank 5 on four linear types (so lambda's 5 triplets split 3 + 2 across two
processes), synthetic data, no dropout. Records on every process, after every masking step, the
scores, the kept-lambda pattern and the forward masks, whether the adapter parameters were DTensors,
and at the end the whole trained tensors. Not a test itself.

    torchrun --standalone --nproc_per_node N tests/training/fsdp_worker.py STRATEGY OUT_DIR BATCH_PER_PROCESS \
        [--save-steps K] [--stop-at S] [--resume]

STRATEGY is one of adarank.training.engine's (fsdp2, ddp, none), or trainer-fsdp2: the transformers Trainer with
accelerate's FSDP2 (GPUs only), recording the same things from a callback.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from adarank import BudgetConfig, RankAllocator, inject_adapters
from adarank.config import ImportanceConfig
from adarank.core.sharding import gathered_trainables, is_sharded, local
from adarank.training.engine import LoopConfig, exit_distributed, train_loop

STEPS = 24
TARGETS = ["query", "value", "attention.output.dense", "intermediate.dense"]
EVENTS: list[dict] = []  # what record() saw after every masking step
SHARDED: list[bool] = []  # whether every adapter's base weight was a DTensor, per step
WHOLE: list[bool] = []  # whether every adapter's trainable parameters were plain tensors, per step
FIRST_PQ_SENSITIVITY: list[float] = []  # the largest P / Q sensitivity (this process's shard) after step 1


def build(task_only: bool = False) -> tuple[torch.nn.Module, RankAllocator]:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=64, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    model = BertForSequenceClassification(config)
    adapters = inject_adapters(model, TARGETS, rank=5, alpha=8, modules_to_save=["classifier"], seed=0)
    budget = BudgetConfig(init_rank=5, target_rank=2, t_init=8, t_final=6, mask_interval=2)
    return model, RankAllocator(adapters, budget, ImportanceConfig(task_only=task_only))


def dataset() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 90, (16 * STEPS, 12), generator=generator)
    labels = (ids[:, :6].float().mean(1) > ids[:, 6:].float().mean(1)).long()
    return [{"input_ids": i, "labels": y} for i, y in zip(ids, labels, strict=True)]


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.stack([r["input_ids"] for r in rows]),
        "labels": torch.stack([r["labels"] for r in rows]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("strategy")
    parser.add_argument("out", type=Path)
    parser.add_argument("batch", type=int)
    parser.add_argument("--save-steps", type=int)
    parser.add_argument("--stop-at", type=int, help="kill the process group right after this step")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--task-only", action="store_true", help="importance.task_only: scores without the penalty")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="the loop's clipping norm")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, allocator = build(args.task_only)
    rank = int(os.environ["RANK"])
    events, sharded = EVENTS, SHARDED

    def record(step: int, alloc: RankAllocator) -> None:
        values = [a.singular_values for a in alloc.adapters.values()]
        # FSDP2 on: each adapter's frozen base weight a DTensor, its own P, lambda, Q whole (adarank's engine)
        sharded.append(all(is_sharded(a.base.weight) for a in alloc.adapters.values()))
        WHOLE.append(not any(is_sharded(p) for a in alloc.adapters.values() for p in a.parameters() if p.requires_grad))
        event = alloc.last_event
        if event is not None and event["step"] == step:
            scores = alloc.triplet_scores()  # a collective on sharded adapters: every process calls it
            kept = [torch.ones(v.shape[0], dtype=torch.int64) for v in values]
            for k, v in zip(kept, values, strict=True):  # lambda != 0, gathered from the shards
                whole = v.detach().full_tensor() if is_sharded(v) else v.detach()
                k.copy_((whole != 0).long())
            events.append({
                "step": step,
                "scores": {n: s.tolist() for n, s in scores.items()},
                "kept": {n: k.tolist() for n, k in zip(alloc.adapters, kept, strict=True)},
                "rank_mask": {n: a.rank_mask.int().tolist() for n, a in alloc.adapters.items()},
                "local_lambda": [int(local(v).shape[0]) for v in values],
            })  # fmt: skip
        if step == 1:  # lambda = 0: P's and Q's gradient is the penalty's alone; task-only scores drop it
            parts = ("left_vectors.sensitivity", "right_vectors.sensitivity")
            largest = max(float(local(s[k]).abs().max()) for s in alloc.scores.values() for k in parts)
            FIRST_PQ_SENSITIVITY.append(largest)
        if args.stop_at == step:
            os._exit(3)  # as if killed: no cleanup, nothing flushed beyond the checkpoints

    if args.strategy == "trainer-fsdp2":
        trainer_fsdp2(model, allocator, args, record)
        return
    config = LoopConfig(
        steps=STEPS, batch_size=args.batch, learning_rate=1e-2, warmup_ratio=0.0, seed=0,
        strategy=args.strategy, save_steps=args.save_steps, checkpoint_dir=str(args.out / "checkpoints"),
        resume=args.resume, log_steps=4, max_grad_norm=args.max_grad_norm,
    )  # fmt: skip
    wrapped, result = train_loop(model, allocator, dataset(), collate, config, on_step=record)
    inner = wrapped.module if hasattr(wrapped, "module") else wrapped
    with gathered_trainables(inner):
        tensors = {n: p.detach().clone() for n, p in inner.named_parameters() if p.requires_grad}
        tensors |= {n: b.clone() for n, b in inner.named_buffers() if n.endswith("rank_mask")}
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, args.out / f"final{rank}.pt")
    (args.out / f"rank{rank}.json").write_text(json.dumps({
        "world_size": int(os.environ["WORLD_SIZE"]),
        "events": events,
        "sharded": sharded,
        "whole": WHOLE,
        "final_ranks": allocator.ranks(),
        "history": allocator.history,
        "trace": allocator.trace,
        "train_loss": result.train_loss,
        "log": result.log_history,
        "first_pq_sensitivity": FIRST_PQ_SENSITIVITY[0] if FIRST_PQ_SENSITIVITY else None,  # None: resumed
    }))  # fmt: skip


def trainer_fsdp2(model: torch.nn.Module, allocator: RankAllocator, args: argparse.Namespace, record) -> None:
    """The Trainer path under accelerate's FSDP2 (CUDA): the callback-driven allocator on DTensors."""
    from transformers import TrainerCallback, TrainingArguments

    from adarank import AdaRankCallback, AdaRankTrainer

    class Record(TrainerCallback):
        def on_optimizer_step(self, a, state, control, **kwargs):  # runs after AdaRankCallback's
            record(state.global_step + 1, allocator)

    training = TrainingArguments(
        output_dir=str(args.out / "trainer"), max_steps=STEPS, per_device_train_batch_size=args.batch,
        learning_rate=1e-2, lr_scheduler_type="constant", save_strategy="no", report_to=[], seed=0,
        fsdp="full_shard", fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"]},
        remove_unused_columns=False, disable_tqdm=True,
    )  # fmt: skip
    callback = AdaRankCallback(allocator)
    trainer = AdaRankTrainer(model=model, args=training, train_dataset=dataset(), data_collator=collate,
                             callbacks=[callback, Record()], orth_weight=0.1, singular_lr_multiplier=10)  # fmt: skip
    trainer.train()
    rank = int(os.environ["RANK"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank}.json").write_text(json.dumps({
        "world_size": int(os.environ["WORLD_SIZE"]), "events": EVENTS, "sharded": SHARDED,
        "final_ranks": allocator.ranks(), "history": allocator.history, "trace": allocator.trace,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
    exit_distributed(0)  # no interpreter shutdown, where gloo can abort (adarank.training.engine.exit_distributed)
