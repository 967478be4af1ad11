"""AdaLoRA in a hand-written accelerate loop: the same functions the Trainer callback calls.

python examples/plain_loop.py --steps 200
python examples/plain_loop.py --steps 200 --wandb offline   # + the rank dashboards, as `adarank train` logs them
"""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from adarank import BudgetConfig, RankAllocator, inject_adapters, orthogonality_penalty, param_groups
from adarank.data import default_model_path, rotten_tomatoes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--wandb", choices=["online", "offline"], help="log the rank-allocation dashboards")
    parser.add_argument("--log-steps", type=int, default=10, help="log the loss every N steps (reading it syncs a GPU)")
    args = parser.parse_args()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(0)

    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    adapters = inject_adapters(
        model,
        ["query", "key", "value", "attention.output.dense"],
        rank=12,
        alpha=16,
        modules_to_save=["classifier"],
        seed=0,
    )
    allocator = RankAllocator(
        adapters, BudgetConfig(init_rank=12, target_rank=8, t_init=0.1, t_final=0.3), total_steps=args.steps
    )
    optimizer = torch.optim.AdamW(param_groups(model, 1e-3, singular_lr_multiplier=10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / args.steps)

    texts, labels = rotten_tomatoes()["train"]
    rows = [{**tokenizer(t, truncation=True, max_length=64), "labels": y} for t, y in zip(texts, labels, strict=True)]
    loader = DataLoader(
        rows[: args.max_train], batch_size=32, shuffle=True, collate_fn=DataCollatorWithPadding(tokenizer)
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    dashboard = None
    if args.wandb and accelerator.is_main_process:
        import wandb

        from adarank.reporting.dashboards import WandbDashboard

        wandb.init(project="adarank-plain-loop", mode=args.wandb)
        dashboard = WandbDashboard(allocator)
        dashboard.begin()  # joins the run just opened

    model.train()
    step = 0
    while step < args.steps:
        for batch in loader:
            penalty = orthogonality_penalty(allocator.adapters.values(), live_only=allocator.finalized)
            loss = model(**batch).loss + 0.1 * penalty
            accelerator.backward(loss)
            optimizer.step()
            step += 1
            # after optimizer.step(), before zero_grad(); the model, so that budget.shrink can cut the adapters
            event = allocator.step(step, optimizer, accelerator.unwrap_model(model))
            scheduler.step()
            optimizer.zero_grad()
            if event and accelerator.is_main_process:
                print(f"step {step}: budget {event['budget']}, live ranks {sum(event['ranks'].values())}")
            if dashboard is not None:
                if event:
                    dashboard.log_event(event)
                if step % args.log_steps == 0:  # reading the loss stops a GPU's host: at logging steps only
                    dashboard.log_train({"loss": float(loss), "step": step})
            if step == args.steps:
                break
    allocator.check_finished()
    accelerator.print(f"final ranks: {allocator.ranks()}")
    if dashboard is not None:
        dashboard.end(step)
        wandb.finish()


if __name__ == "__main__":
    main()
