"""Worker for the two-process test (launched by torchrun): a short Trainer run with AdaRankCallback on a
tiny local BERT, data in a fixed order, recording on every process the examples it trained on and the
masks after every allocation step. Not a test itself.

    torchrun --standalone --nproc_per_node 2 tests/training/ddp_worker.py MODEL_DIR OUT_DIR BATCH [DATA_SEED]
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, TrainerCallback, TrainingArguments

from adarank import AdaRankCallback, AdaRankTrainer, BudgetConfig, RankAllocator, inject_adapters
from adarank.core.importance import triplet_scores
from adarank.training.engine import exit_distributed
from adarank.training.trainer import check_launch

STEPS = 24


class Recorder(TrainerCallback):
    """Masks (forward rank_mask and the kept lambda pattern) after every allocation event."""

    def __init__(self, allocator: RankAllocator):
        self.allocator = allocator
        self.events: list[dict] = []

    def on_optimizer_step(self, args, state, control, **kwargs):  # runs after AdaRankCallback's
        event = self.allocator.last_event
        if event is not None and event["step"] == state.global_step + 1:
            self.events.append(
                {
                    "step": event["step"],
                    "kept": {n: (a.singular_values != 0).int().tolist() for n, a in self.allocator.adapters.items()},
                    "rank_mask": {n: a.rank_mask.int().tolist() for n, a in self.allocator.adapters.items()},
                    "scores": {n: triplet_scores(s).tolist() for n, s in self.allocator.scores.items()},
                }
            )


class RecordingCollator:
    """Pads a batch and records the ids of the examples in it (the data shard of this process)."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def __call__(self, features):
        self.seen.append([int(f["idx"]) for f in features])
        return {
            "input_ids": torch.tensor([f["input_ids"] for f in features]),
            "labels": torch.tensor([f["labels"] for f in features]),
        }


def main() -> None:
    model_dir, out_dir, batch = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    data_seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    torch.set_num_threads(1)
    from datasets import Dataset

    generator = torch.Generator().manual_seed(data_seed)
    n = 16 * STEPS
    input_ids = torch.randint(5, 90, (n, 12), generator=generator)
    labels = (input_ids[:, :6].float().mean(1) > input_ids[:, 6:].float().mean(1)).long()
    data = Dataset.from_dict({"input_ids": input_ids.tolist(), "labels": labels.tolist(), "idx": list(range(n))})
    model = AutoModelForSequenceClassification.from_pretrained(  # no dropout: runs must be comparable
        model_dir, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    adapters = inject_adapters(
        model,
        ["query", "key", "value", "attention.output.dense"],
        rank=4,
        alpha=8,
        modules_to_save=["classifier"],
        seed=0,
    )
    budget = BudgetConfig(init_rank=4, target_rank=2, t_init=8, t_final=6, mask_interval=2)
    allocator = RankAllocator(adapters, budget)
    recorder, collator = Recorder(allocator), RecordingCollator()
    args = TrainingArguments(
        output_dir=str(out_dir / "trainer"),
        max_steps=STEPS,
        per_device_train_batch_size=batch,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        train_sampling_strategy="sequential",  # the same global batches whatever the world size
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        seed=0,
        disable_tqdm=True,
    )
    check_launch(int(os.environ.get("WORLD_SIZE", "1")), args.world_size)
    trainer = AdaRankTrainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=collator,
        callbacks=[AdaRankCallback(allocator), recorder],
        orth_weight=0.1,
        singular_lr_multiplier=10,
    )
    trainer.train()
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()  # every trained tensor: P, lambda, Q, masks, head
    for name, tensor in sorted(model.state_dict().items()):
        if "vectors" in name or "singular_values" in name or "rank_mask" in name or "classifier" in name:
            digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    record = {
        "world_size": args.world_size,
        "rank": args.process_index,
        "seen": collator.seen,
        "events": recorder.events,
        "final_ranks": allocator.ranks(),
        "adapter_sha256": digest.hexdigest(),
        "shrunk_at": next((e["step"] for e in allocator.history if e["final"]), None) if allocator.shrunk else None,
        "trainable_after": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "ddp_rebuilt": trainer._rewrapped is not None,
    }
    (out_dir / f"rank{args.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
    exit_distributed(0)  # no interpreter shutdown, where gloo can abort (adarank.training.engine.exit_distributed)
