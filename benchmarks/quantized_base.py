"""A quantized frozen base on SmolLM2-135M-Instruct (issue 41): for float32, bfloat16, int8 and nf4, the
base's memory once loaded and the quality of one short run.

    python benchmarks/quantized_base.py --steps 40 --out reports/quantized_base.json

Memory: in a fresh process per setting, RSS after the imports, then after loading the base (the GGUF
dequantized beforehand and cached, so its peak is not in it), quantizing it, a garbage collection and one
read of every plain tensor (float weights memory-mapped from the checkpoint count once read, as in
training); the difference is the base's memory. Quality: `adarank train configs/rt-smollm2-adalora.yaml` for --steps
steps at each setting (model.dtype / model.quantization), its validation answer loss and exact match.
Run it alone on the machine or not, RSS and losses do not depend on it (no timing is reported).
Prints a Markdown table and writes every figure, with the commands and the commit, to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SETTINGS = {
    "float32": ["model.dtype=float32"],
    "bfloat16": ["model.dtype=bfloat16"],
    "int8": ["model.quantization=int8"],
    "nf4": ["model.quantization=nf4"],
}
MEASURE = """
import gc, json, sys, psutil
import adarank.io.models, adarank.io.quantize, torch, transformers
from adarank.checks import load_config
rss = lambda: psutil.Process().memory_info().rss
cfg = load_config(sys.argv[1], sys.argv[2:])
before = rss()
_, model, new = adarank.io.models.load_model(cfg.model, generation=True, num_labels=2)
adarank.io.quantize.quantize_base_(model, cfg.model.quantization, keep=tuple(new))
gc.collect()
with torch.no_grad():  # touch every plain tensor: weights memory-mapped from the file count once read
    for t in [*model.parameters(), *model.buffers()]:
        if type(t.data) is torch.Tensor:
            t.data.sum()
after = rss()
print(json.dumps({"rss_after_imports": before, "rss_loaded": after, "base_mib": (after - before) / 2**20}))
"""


def table(record: dict) -> str:
    """The report's table (reports/quantized_base.md) from a record this script wrote."""
    lines = ["| base | memory once loaded (MiB) | validation answer loss | exact match % |", "|---|---|---|---|"]
    for name, r in record["settings"].items():
        loss, match = r["validation_answer_loss"], 100 * r["validation_accuracy"]
        lines.append(f"| {name} | {r['base_mib']:.0f} | {loss:.4f} | {match:.1f} |")
    return "\n".join(lines)


def _memory(config: str, overrides: list[str], env: dict[str, str]) -> dict:
    """The base's RSS once loaded, in a fresh process (``MEASURE``); large blocks mmapped, so the float weights
    quantization frees go back to the system (reports/fsdp2.md)."""
    measure = [sys.executable, "-c", MEASURE, config, *overrides]
    done = subprocess.run(measure, capture_output=True, text=True, env={**env, "MALLOC_MMAP_THRESHOLD_": "65536"},
                          check=True)  # fmt: skip
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--config", default="configs/rt-smollm2-adalora.yaml")
    parser.add_argument("--runs", type=Path, default=Path("runs/quantized_base"))
    parser.add_argument("--out", type=Path, default=Path("reports/quantized_base.json"))
    parser.add_argument("--table", type=Path, help="print the table of this record and exit")
    parser.add_argument(
        "--memory-only",
        nargs="+",
        metavar="SETTING",
        help="measure only these settings' memory and add it, with this commit, to --out's record",
    )
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "WANDB_MODE": "disabled"}
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    if args.memory_only:
        record = json.loads(args.out.read_text())
        for name in args.memory_only:
            memory = _memory(args.config, SETTINGS[name], env)
            record["settings"][name]["memory_remeasured"] = {**memory, "commit": _commit()}
            print(f"{name}: base {memory['base_mib']:.0f} MiB once loaded (commit {_commit()})")
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        return
    results: dict[str, dict] = {}
    for name, overrides in SETTINGS.items():
        measure = [sys.executable, "-c", MEASURE, args.config, *overrides]
        memory = _memory(args.config, overrides, env)
        print(f"{name}: base {memory['base_mib']:.0f} MiB once loaded", flush=True)
        run = args.runs / name
        train = [sys.executable, "-m", "adarank", "train", args.config, *overrides, f"train.max_steps={args.steps}",
                 f"output_dir={run}", "overwrite=true", "wandb.mode=disabled"]  # fmt: skip
        subprocess.run(train, env=env, check=True, stdout=subprocess.DEVNULL)
        metrics = json.loads((run / "metrics.json").read_text())
        results[name] = {
            **memory,
            "validation_answer_loss": metrics["validation_answer_loss"],
            "validation_accuracy": metrics["validation_accuracy"],
            "commands": [" ".join(["python", "-c", "MEASURE", *measure[3:]]), " ".join(train[1:])],
        }
        print(f"{name}: validation answer loss {metrics['validation_answer_loss']:.4f}", flush=True)
    record = {"commit": _commit(), "steps": args.steps, "config": args.config, "settings": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(table(record))


if __name__ == "__main__":
    main()
