"""Validation study behind the defaults: does adarank's AdaLoRA learn as fast as LoRA here?

Runs, one after another on the default task (MiniLM, Rotten Tomatoes, same data, steps, batch,
seed and learning-rate schedule), PEFT's LoRA r=8 and adarank variants that differ in one setting,
and prints validation accuracy (the split the defaults are chosen on) and test accuracy.

    OMP_NUM_THREADS=2 python scripts/compare_init.py [--steps 400] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from adarank.config import load_config
from adarank.models import load_model
from adarank.run import train, training_arguments
from adarank.tasks import build_datasets, classification_accuracy, model_columns

TARGETS = "[query,key,value,attention.output.dense]"
VARIANTS: dict[str, list[str]] = {
    "adarank 12->8, lambda lr x10 (default)": [],
    "adarank 12->8, lambda lr x1 (paper/PEFT parametrization)": ["train.singular_lr_multiplier=1"],
    "adarank 12->8, lambda lr x20": ["train.singular_lr_multiplier=20"],
    "adarank 12->8, all-linear": ["adapter.target_modules=[all-linear]"],
    "peft LoRA r=8, alpha 16": [],
}


def peft_lora(cfg, out: Path) -> dict[str, float]:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorWithPadding, Trainer

    tokenizer, base, head = load_model(cfg.model, generation=False, num_labels=2)
    model = get_peft_model(
        base,
        LoraConfig(r=8, lora_alpha=16, target_modules=list(cfg.adapter.target_modules), modules_to_save=head),
    )
    data = build_datasets(tokenizer, cfg)
    trainer = Trainer(
        model=model,
        args=training_arguments(cfg, out, []),
        train_dataset=model_columns(data["train"]),
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=classification_accuracy,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {
        "validation_accuracy": trainer.evaluate(model_columns(data["validation"]), metric_key_prefix="v")["v_accuracy"],
        "eval_accuracy": trainer.evaluate(model_columns(data["test"]), metric_key_prefix="t")["t_accuracy"],
        "train_seconds": seconds,
        "trainable_params_initial": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--only", nargs="*", help="substrings of variant names to run")
    parser.add_argument("--out", default="runs/compare_init")
    args = parser.parse_args()
    results = []
    for name, overrides in VARIANTS.items():
        if args.only and not any(s in name for s in args.only):
            continue
        out = Path(args.out) / name.split(",")[0].replace(" ", "_").replace(">", "") / str(len(results))
        common = [
            f"output_dir={out}",
            "overwrite=true",
            "wandb.mode=disabled",
            f"train.max_steps={args.steps}",
            f"adapter.target_modules={TARGETS}",
        ]
        cfg = load_config(None, common + overrides)
        metrics = peft_lora(cfg, out) if name.startswith("peft") else train(cfg)
        row = {
            "variant": name,
            **{
                k: metrics[k]
                for k in ("validation_accuracy", "eval_accuracy", "train_seconds", "trainable_params_initial")
            },
        }
        results.append(row)
        print("RESULT " + json.dumps(row), flush=True)
    print("\n| variant | validation acc | test acc | train s | trainable at start |\n|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['variant']} | {r['validation_accuracy']:.4f} | {r['eval_accuracy']:.4f} | "
            f"{r['train_seconds']:.0f} | {r['trainable_params_initial']:,} |"
        )


if __name__ == "__main__":
    main()
