"""Cost of adaptive rank, measured in one run on one machine: training step time and peak memory of
adarank AdaLoRA against adarank LoRA at the same initial rank, PEFT's AdaLoRA and PEFT's LoRA; the
allocator's own time per step; allocator state size; merged-model inference latency against the base.

    OMP_NUM_THREADS=2 python benchmarks/bench.py [--repeats 3] [--steps 15]
    OMP_NUM_THREADS=2 python benchmarks/bench.py --final-phase [--repeats 5] [--steps 15]

``--final-phase`` measures the cost of the final phase (masks fixed) instead: adarank AdaLoRA 12 -> 4
with ``budget.shrink`` against the same without it, and adarank LoRA at the target rank (4) and at the
initial rank (12): the optimizer-state bytes (exact) and the step time of the steps after the final
masks, in paired interleaved rounds.

Every configuration runs in its own subprocess (so peak RSS is per configuration), repeats are
interleaved (A B C D A B C D ...), and medians are reported. Same model (MiniLM), data (Rotten
Tomatoes, batch 32, 64 tokens), adapted modules (query, key, value, attention.output.dense) and
initial rank 12 everywhere. Timed steps fall inside the budget-decay window, so AdaLoRA scores on
every step and masks every 10.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from provenance import commit

CONFIGS = ("adarank-adalora", "adarank-lora", "peft-adalora", "peft-lora")
FINAL_CONFIGS = ("adalora-shrink", "adalora-no-shrink", "lora-target-rank", "lora-initial-rank")
TARGET_RANK, FINAL_START = 4, 10
TARGETS = ["query", "key", "value", "attention.output.dense"]
RANK, BATCH, LENGTH, TOTAL = 12, 32, 64, 1000


def _batches(tokenizer: Any, count: int) -> list[dict]:
    from adarank.data import rotten_tomatoes

    texts, labels = rotten_tomatoes()["train"]
    out = []
    for i in range(count):
        chunk = slice(i * BATCH, (i + 1) * BATCH)
        encoded = tokenizer(texts[chunk], padding="max_length", truncation=True, max_length=LENGTH,
                            return_tensors="pt")  # fmt: skip
        out.append({**encoded, "labels": __import__("torch").tensor(labels[chunk])})
    return out


def _model() -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from adarank.data import default_model_path

    torch.manual_seed(0)
    path = default_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


def worker(config: str, warmup: int, steps: int) -> dict[str, float]:
    """Train ``warmup + steps`` steps of one configuration; time the last ``steps``."""
    import torch

    from adarank import BudgetConfig, RankAllocator, inject_adapters, orthogonality_penalty, param_groups

    tokenizer, model = _model()
    batches = _batches(tokenizer, warmup + steps)
    allocator, peft_model, state_bytes, adapter_bytes = None, None, 0, 0
    if config.startswith("adarank"):
        adapters = inject_adapters(model, TARGETS, rank=RANK, alpha=16, modules_to_save=["classifier"], seed=0)
        adaptive = config == "adarank-adalora"
        budget = BudgetConfig(schedule="cubic" if adaptive else "constant", init_rank=RANK,
                              target_rank=8 if adaptive else RANK, t_init=0, t_final=0.3, mask_interval=10)  # fmt: skip
        allocator = RankAllocator(adapters, budget, total_steps=TOTAL)
        optimizer = torch.optim.AdamW(param_groups(model, 1e-3, singular_lr_multiplier=10))
        adapter_bytes = sum(p.numel() * 4 for a in adapters.values() for p in a.parameters() if p.requires_grad)
    else:
        from peft import AdaLoraConfig, LoraConfig, get_peft_model

        if config == "peft-adalora":
            peft_config: Any = AdaLoraConfig(init_r=RANK, target_r=8, lora_alpha=16, target_modules=TARGETS,
                                             tinit=0, tfinal=300, deltaT=10, orth_reg_weight=0.1,
                                             total_step=TOTAL, modules_to_save=["classifier"])  # fmt: skip
        else:
            peft_config = LoraConfig(r=RANK, lora_alpha=16, target_modules=TARGETS, modules_to_save=["classifier"])
        model = peft_model = get_peft_model(model, peft_config)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    step_times, allocator_times = [], []
    for step, batch in enumerate(batches, start=1):
        start = time.perf_counter()
        loss = model(**batch).loss
        if allocator is not None and config == "adarank-adalora":
            loss = loss + 0.1 * orthogonality_penalty(allocator.adapters.values())
        loss.backward()
        optimizer.step()
        allocating = time.perf_counter()
        if allocator is not None:
            allocator.step(step, optimizer)
        elif config == "peft-adalora":
            peft_model.base_model.update_and_allocate(step)  # as PEFT's docs say: after step, before zero_grad
        allocated = time.perf_counter()
        optimizer.zero_grad()
        if step > warmup:
            step_times.append(time.perf_counter() - start)
            allocator_times.append(allocated - allocating)
    if config == "adarank-adalora":
        assert allocator is not None
        state_bytes = sum(v.numel() * v.element_size() for s in allocator.scores.values() for v in s.values())
    elif config == "peft-adalora":
        rank_allocator = peft_model.base_model.rankallocator
        tensors = [
            *rank_allocator.ipt.values(),
            *rank_allocator.exp_avg_ipt.values(),
            *rank_allocator.exp_avg_unc.values(),
        ]
        state_bytes = sum(t.numel() * t.element_size() for t in tensors)
        adapter_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if "lora_" in n)
    return {
        "step_s": statistics.median(step_times),
        "allocator_s": statistics.median(allocator_times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "state_copies": state_bytes / adapter_bytes if adapter_bytes and state_bytes else 0.0,
    }


def final_phase_worker(config: str, warmup: int, steps: int) -> dict[str, float]:
    """Train ``warmup + steps`` steps, the final masks fixed at step FINAL_START <= warmup; time the last
    ``steps`` and count the optimizer state's bytes at the end."""
    import torch

    from adarank import BudgetConfig, RankAllocator, inject_adapters, orthogonality_penalty, param_groups
    from adarank.core.shrink import shrink_

    assert warmup >= FINAL_START + 2, "time steps after the final masks (and the shrink)"
    tokenizer, model = _model()
    batches = _batches(tokenizer, warmup + steps)
    adaptive = config.startswith("adalora")
    rank = TARGET_RANK if config == "lora-target-rank" else RANK
    adapters = inject_adapters(model, TARGETS, rank=rank, alpha=16, modules_to_save=["classifier"], seed=0)
    total = warmup + steps
    budget = BudgetConfig(schedule="cubic" if adaptive else "constant", init_rank=rank,
                          target_rank=TARGET_RANK if adaptive else rank, t_init=0, t_final=total - FINAL_START,
                          mask_interval=2, shrink=config == "adalora-shrink")  # fmt: skip
    allocator = RankAllocator(adapters, budget, total_steps=total)
    optimizer = torch.optim.AdamW(param_groups(model, 1e-3, singular_lr_multiplier=10))
    model.train()
    step_times = []
    for step, batch in enumerate(batches, start=1):
        start = time.perf_counter()
        penalty = orthogonality_penalty(allocator.adapters.values(), live_only=allocator.finalized)
        loss = model(**batch).loss + 0.1 * penalty
        loss.backward()
        optimizer.step()
        allocator.step(step, optimizer)
        if budget.shrink and allocator.finalized and not allocator.shrunk:
            shrink_(model, allocator, optimizer)
        optimizer.zero_grad()
        if step > warmup:
            step_times.append(time.perf_counter() - start)
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {
        "step_s": statistics.median(step_times),
        "optimizer_state_bytes": sum(v.numel() * v.element_size() for v in state),
        "live_triplets": sum(allocator.ranks().values()),
        "trained_triplets": sum(a.rank for a in allocator.adapters.values()),
    }


def final_phase(args: argparse.Namespace) -> None:
    """Paired interleaved rounds of the four final-phase configurations; a table of medians and spreads."""
    results: dict[str, list[dict]] = {c: [] for c in FINAL_CONFIGS}
    for repeat in range(args.repeats):
        for config in FINAL_CONFIGS:
            run = _spawn(["--worker", config, "--steps", str(args.steps), "--warmup", str(args.warmup)])
            results[config].append(run)
            print(f"round {repeat + 1}/{args.repeats} {config}: {run}", flush=True)
    print(f"\nfinal phase: {args.steps} timed steps after step {args.warmup} (final masks fixed at step {FINAL_START})")
    print("| configuration | triplets trained / live | optimizer state (bytes) | step time (s, median; min-max) |"
          " vs LoRA r=4: median ratio per round (min-max) |\n|---|---|---|---|---|")  # fmt: skip
    for config, runs in results.items():
        times = [r["step_s"] for r in runs]
        ratios = [r["step_s"] / b["step_s"] for r, b in zip(runs, results["lora-target-rank"], strict=True)]
        timing = f"{statistics.median(times):.4f} ({min(times):.4f}-{max(times):.4f})"
        print(f"| {config} | {runs[0]['trained_triplets']} / {runs[0]['live_triplets']} | "
              f"{runs[0]['optimizer_state_bytes']:,} | {timing} | "
              f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")  # fmt: skip


def inference_worker(repeats: int) -> dict[str, float]:
    """Forward latency (batch 32 x 64, eval, no grad) of the base model, the adapted model, and its merge."""
    import torch

    from adarank import inject_adapters
    from adarank.core.export import merged_copy

    tokenizer, base = _model()
    batch = {k: v for k, v in _batches(tokenizer, 1)[0].items() if k != "labels"}
    adapted = _model()[1]
    adapters = inject_adapters(adapted, TARGETS, rank=RANK, alpha=16, seed=0)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.singular_values.normal_()
    merged = merged_copy(adapted)
    models = {"base": base.eval(), "adapted (unmerged)": adapted.eval(), "merged": merged.eval()}
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for _ in range(3):
            for model in models.values():
                model(**batch)
        for _ in range(repeats):  # interleaved
            for name, model in models.items():
                start = time.perf_counter()
                model(**batch)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _spawn(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--final-phase", action="store_true", help="the final phase's cost, with and without shrink")
    parser.add_argument("--worker", choices=[*CONFIGS, *FINAL_CONFIGS, "inference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is None:
        print(f"commit {commit()}", flush=True)
    if args.worker in FINAL_CONFIGS:
        print(json.dumps(final_phase_worker(args.worker, args.warmup, args.steps)))
        return
    if args.final_phase:
        final_phase(args)
        return
    if args.worker == "inference":
        print(json.dumps(inference_worker(30)))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.warmup, args.steps)))
        return
    results: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for repeat in range(args.repeats):
        for config in CONFIGS:
            results[config].append(
                _spawn(["--worker", config, "--steps", str(args.steps), "--warmup", str(args.warmup)])
            )
            print(f"repeat {repeat + 1}/{args.repeats} {config}: {results[config][-1]}", flush=True)
    med = {c: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for c, runs in results.items()}
    base = med["adarank-lora"]["step_s"]
    print("\n| configuration | step time (s, median; min-max over repeats) | vs adarank LoRA | allocator time / step |"
          " peak RSS (MB) | allocator state (fp32 copies of adapter params) |\n|---|---|---|---|---|---|")  # fmt: skip
    for config, m in med.items():
        share = m["allocator_s"] / m["step_s"]
        spread = [r["step_s"] for r in results[config]]
        timing = f"{m['step_s']:.3f} ({min(spread):.3f}-{max(spread):.3f})"
        allocator = f"{1000 * m['allocator_s']:.1f} ms ({100 * share:.1f}%)"
        print(
            f"| {config} | {timing} | {m['step_s'] / base:.3f}x | {allocator} | {m['peak_rss_mb']:.0f} | "
            f"{m['state_copies']:.2f} |"
        )
    ours, peft = med["adarank-adalora"]["step_s"], med["peft-adalora"]["step_s"]
    print(f"\nadarank AdaLoRA / adarank LoRA step time: {ours / base:.3f} (target <= 1.05)")
    print(f"adarank AdaLoRA / PEFT AdaLoRA step time: {ours / peft:.3f} (target < 1)")
    print("paired per repeat (each ratio within one interleaved round, so slow drifts of the machine cancel):")
    for other, target in (("adarank-lora", "<= 1.05"), ("peft-adalora", "< 1"), ("peft-lora", "")):
        ratios = [a["step_s"] / b["step_s"] for a, b in zip(results["adarank-adalora"], results[other], strict=True)]
        goal = f" (target {target})" if target else ""
        print(
            f"  adarank-adalora / {other}: median {statistics.median(ratios):.3f}, "
            f"min-max {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} rounds{goal}"
        )
    latency = _spawn(["--worker", "inference"])
    print("\n| model (batch 32 x 64, eval) | forward latency (ms, median of 30) | vs base |\n|---|---|---|")
    for name, seconds in latency.items():
        print(f"| {name} | {1000 * seconds:.1f} | {seconds / latency['base']:.3f}x |")


if __name__ == "__main__":
    main()
