"""FSDP2 step time and collectives per step on CPU processes (issue 42): adarank's engine
(``adarank.training.engine.train_loop``) on a randomly initialised model of a real configuration
(SmolLM2-135M's by default), adarank AdaLoRA on the attention projections, random tokens; every
collective the process calls during training is counted by entry point (torch.distributed's, which
FSDP2 and the engine call, and the functional ones DTensor calls), and each optimizer step timed.
Prints one JSON line per process (and appends it to ``--out``): the median and quartiles of the step
time after ``--skip`` warm-up steps, the collectives per step by kind, and which adarank it ran (its
folder and commit), so the same script times two checkouts:

    OUT=studies/runs/fsdp2/step_ab.jsonl
    PYTHONPATH=/path/to/other/checkout torchrun --standalone --nproc_per_node 2 benchmarks/fsdp_step.py --out $OUT
    torchrun --standalone --nproc_per_node 2 benchmarks/fsdp_step.py --out $OUT
    python benchmarks/fsdp_step.py --table $OUT
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from provenance import commit, emit, read_records


class Collectives:
    """Counts calls of torch.distributed's collectives (and its functional ones) while installed."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.patched: list[tuple[Any, str, Any]] = []

    def install(self) -> None:
        import torch.distributed as dist
        import torch.distributed._functional_collectives as funcol

        for module in (dist, funcol):
            for name in dir(module):
                target = getattr(module, name)
                if name.startswith(("all_", "reduce_scatter", "broadcast", "reduce", "gather", "scatter", "barrier")) \
                        and callable(target) and not isinstance(target, type):  # fmt: skip
                    self.patched.append((module, name, target))
                    setattr(module, name, self._counting(f"{module.__name__.rsplit('.', 1)[-1]}.{name}", target))

    def _counting(self, label: str, original: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.counts[label] = self.counts.get(label, 0) + 1
            return original(*args, **kwargs)

        return call

    def remove(self) -> None:
        for module, name, original in self.patched:
            setattr(module, name, original)


def adarank_checkout() -> tuple[str, str]:
    """The folder adarank was imported from, and its checkout's commit (+dirty)."""
    import adarank

    folder = Path(adarank.__file__).resolve().parent.parent
    return str(folder), commit(folder)


def measure(args: argparse.Namespace) -> dict:
    import os

    from transformers import AutoModelForCausalLM

    from adarank import BudgetConfig, RankAllocator, inject_adapters
    from adarank.config import ModelConfig
    from adarank.io.models import read_config
    from adarank.training.engine import LoopConfig, init_distributed, train_loop

    torch.manual_seed(0)
    torch.set_num_threads(1)
    init_distributed()
    config = read_config(ModelConfig(args.model))
    model = AutoModelForCausalLM.from_config(config)
    adapters = inject_adapters(model, ["q_proj", "v_proj"], rank=args.rank, alpha=2 * args.rank, seed=0)
    budget = BudgetConfig(init_rank=args.rank, target_rank=args.rank // 2, t_init=2, t_final=2, mask_interval=2)
    allocator = RankAllocator(adapters, budget)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (256, args.length), generator=generator)
    rows = [{"input_ids": t, "labels": t} for t in tokens]

    def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([r[k] for r in batch]) for k in ("input_ids", "labels")}

    stamps: list[float] = []
    counter = Collectives()

    def on_step(step: int, _: RankAllocator) -> None:
        stamps.append(time.perf_counter())

    loop = LoopConfig(steps=args.steps, batch_size=args.batch, learning_rate=1e-3, strategy="fsdp2",
                      log_steps=args.log_steps)  # fmt: skip
    counter.install()
    start = time.perf_counter()
    train_loop(model, allocator, rows, collate, loop, on_step=on_step)
    counter.remove()
    times = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)][args.skip :]
    quartiles = statistics.quantiles(times, n=4)
    folder, checkout = adarank_checkout()
    steps = len(stamps)
    return {
        "adarank": folder,
        "commit": checkout,
        "rank": int(os.environ["RANK"]),
        "world_size": int(os.environ["WORLD_SIZE"]),
        "model": args.model,
        "steps": steps,
        "log_steps": args.log_steps,
        "step_s_median": round(statistics.median(times), 4),
        "step_s_q1": round(quartiles[0], 4),
        "step_s_q3": round(quartiles[2], 4),
        "collectives_per_step": round(sum(counter.counts.values()) / steps, 2),  # the same calls as by kind
        "collectives_by_kind_per_step": {k: round(v / steps, 2) for k, v in sorted(counter.counts.items())},
        "torch": torch.__version__,
    }


def table(records: list[dict]) -> str:
    lines = ["| adarank commit | process | steps | median step s | q1 | q3 | collectives / step | by kind / step |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in records:
        kinds = ", ".join(f"{k} {v}" for k, v in r["collectives_by_kind_per_step"].items())
        lines.append(f"| {r['commit']} | {r['rank']} | {r['steps']} | {r['step_s_median']} | {r['step_s_q1']} | "
                     f"{r['step_s_q3']} | {r['collectives_per_step']} | {kinds} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="an embedded model name or folder (config only is read)")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--skip", type=int, default=4, help="warm-up steps left out of the step time")
    parser.add_argument("--log-steps", type=int, default=10)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path, help="print the markdown table of a JSONL written by earlier runs")
    args = parser.parse_args()
    if args.table:
        print(table(read_records(args.table)))
        return
    emit(measure(args), args.out)


if __name__ == "__main__":
    from adarank.training.engine import exit_distributed

    main()
    exit_distributed(0)
