"""Validation study behind the defaults: does adarank's AdaLoRA learn as fast as LoRA here?

Runs, one after another on the default task (MiniLM, Rotten Tomatoes, same data, steps, batch,
seed and learning-rate schedule), PEFT's LoRA r=8 and adarank variants that differ in one setting,
and prints validation accuracy (the split the defaults are chosen on) and test accuracy.

    OMP_NUM_THREADS=2 python studies/compare_init.py [--steps 400] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from peft_run import train_peft  # studies/peft_run.py: PEFT on the same config
from sweep import commit  # studies/sweep.py: the checked-out commit, recorded with every result

from adarank.checks import load_config
from adarank.run import train

TARGETS = "[query,key,value,attention.output.dense]"
VARIANTS: dict[str, list[str]] = {
    "adarank 12->8, lambda lr x10 (default)": [],
    "adarank 12->8, lambda lr x1 (paper/PEFT parametrization)": ["train.singular_lr_multiplier=1"],
    "adarank 12->8, lambda lr x20": ["train.singular_lr_multiplier=20"],
    "adarank 12->8, all-linear": ["adapter.target_modules=[all-linear]"],
    "peft LoRA r=8, alpha 16": [],
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
        metrics = train_peft("lora", cfg) if name.startswith("peft") else train(cfg)
        row = {
            "variant": name,
            "commit": commit(),
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
