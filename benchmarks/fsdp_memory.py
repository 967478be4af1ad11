"""Memory per process under FSDP2 vs DDP (issue 19): a randomly initialized model of a real
configuration (SmolLM2-135M's by default; no weights needed), adarank AdaLoRA adapters on all 7 linear
types, a few steps of adarank's own loop on random tokens, then the bytes each process holds, counted
exactly from the tensors' local storage: the base weights, the adapters (and any new head), the
optimizer state and the allocator's score EMAs; gradients are as large as the trainable parameters.
Also the process's resident memory at the end (RSS; it includes Python, torch and the activations'
allocator cache, so it is an upper bound) and at its peak. Every process writes its own row.

With ``--load rank0`` (FSDP2 only) process 0 builds the model and the others build it on the meta device
and receive their shards from process 0 (``adarank.core.sharding.shard_from_rank0_``); with ``--load every``
each process builds the whole model and ``fully_shard`` keeps its shards (the earliest behaviour).

With ``--checkpoint DIR`` the model is read from a safetensors checkpoint by adarank's loader, as
``adarank train distributed.strategy=fsdp2`` reads it (``adarank.io.sharded.load_model_sharded``):
``--load rows`` (the default there) every process reads only its own rows; ``--load rank0`` process 0
loads the checkpoint and sends the others their shards. ``--save-checkpoint DIR`` writes such a
checkpoint first (the configuration randomly initialised, float32, one file). Each row records the
process's resident memory once its imports are done (``rss_imports_MiB``), so the loading peak above it
is ``peak_rss_loaded_MiB - rss_imports_MiB``.

    python benchmarks/fsdp_memory.py --save-checkpoint /tmp/smollm2-random
    export MALLOC_MMAP_THRESHOLD_=65536 OUT=studies/runs/fsdp2/memory_rows.jsonl
    torchrun --standalone --nproc_per_node 2 benchmarks/fsdp_memory.py --strategy fsdp2 \
        --checkpoint /tmp/smollm2-random --load rows --out $OUT
    torchrun --standalone --nproc_per_node 2 benchmarks/fsdp_memory.py --strategy fsdp2 \
        --checkpoint /tmp/smollm2-random --load rank0 --out $OUT

    OUT=studies/runs/fsdp2/memory_loading.jsonl
    torchrun --standalone --nproc_per_node 2 benchmarks/fsdp_memory.py --strategy fsdp2 --load rank0 --out $OUT
    torchrun --standalone --nproc_per_node 2 benchmarks/fsdp_memory.py --strategy fsdp2 --load every --out $OUT
    torchrun --standalone --nproc_per_node 2 benchmarks/fsdp_memory.py --strategy ddp --out $OUT
    python benchmarks/fsdp_memory.py --table $OUT
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
from pathlib import Path

import torch
from provenance import commit, emit, read_records

ATTENTION_AND_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def local_bytes(tensors) -> int:
    from adarank.core.sharding import local

    return sum(local(t).numel() * local(t).element_size() for t in tensors)


def rss_mib(trim: bool = False) -> float:
    """Resident memory of this process; ``trim`` first hands glibc's freed heap back to the system, so
    memory freed after sharding (the whole model each process loaded) is not counted."""
    if trim:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def import_model_code(args: argparse.Namespace) -> None:
    """Import what loading imports lazily (the model's transformers module, FSDP2), so that the resident
    memory after imports (``rss_imports_MiB``) is the baseline loading adds to."""
    import importlib

    import torch.distributed.fsdp  # noqa: F401

    from adarank.config import ModelConfig
    from adarank.io.models import read_config

    source = ModelConfig(str(args.checkpoint)) if args.checkpoint else ModelConfig(args.model)
    importlib.import_module(
        f"transformers.models.{read_config(source).model_type}.modeling_{read_config(source).model_type}"
    )


def measure(args: argparse.Namespace) -> dict:
    from transformers import AutoModelForCausalLM

    from adarank import BudgetConfig, RankAllocator, inject_adapters
    from adarank.config import ModelConfig
    from adarank.core.sharding import shard_from_rank0_, shard_loaded_, shard_model
    from adarank.io.models import read_config
    from adarank.io.sharded import load_model_sharded
    from adarank.training.engine import LoopConfig, init_distributed, train_loop

    torch.manual_seed(0)
    torch.set_num_threads(1)
    rank, _, device = init_distributed()
    import_model_code(args)  # counted in the resident memory after imports, not in loading
    rss_imports = rss_mib()
    if args.checkpoint:
        if args.strategy != "fsdp2" or args.load == "every":
            raise SystemExit("--checkpoint measures adarank's FSDP2 loading: --strategy fsdp2 --load rows|rank0")
        _, model, _ = load_model_sharded(ModelConfig(str(args.checkpoint)), True, 2, by_rows=args.load == "rows")
        config = model.config
    else:
        if args.load == "rows":
            raise SystemExit("--load rows reads a checkpoint: give --checkpoint DIR")
        config = read_config(ModelConfig(args.model))
        meta = args.strategy == "fsdp2" and args.load == "rank0" and rank != 0
        with torch.device("meta" if meta else "cpu"):
            model = AutoModelForCausalLM.from_config(config)
    adapters = inject_adapters(model, ATTENTION_AND_MLP, rank=args.rank, alpha=2 * args.rank, seed=0)
    if args.checkpoint:
        shard_loaded_(model, device)
    elif args.strategy == "fsdp2" and args.load == "rank0":
        shard_from_rank0_(model, device)
    elif args.strategy == "fsdp2":
        shard_model(model)  # train_loop would; here first, to read the peak of loading alone
    loaded_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    budget = BudgetConfig(init_rank=args.rank, target_rank=args.rank // 2, t_init=1, t_final=1, mask_interval=1)
    allocator = RankAllocator(adapters, budget)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (64, args.length), generator=generator)
    rows = [{"input_ids": t, "labels": t} for t in tokens]

    def collate(batch):
        return {k: torch.stack([r[k] for r in batch]) for k in ("input_ids", "labels")}

    loop = LoopConfig(
        steps=args.steps, batch_size=args.batch, learning_rate=1e-3, strategy=args.strategy, log_steps=10**9
    )
    wrapped, result = train_loop(model, allocator, rows, collate, loop)
    params = list(wrapped.parameters())
    frozen = [p for p in params if not p.requires_grad]
    trainable = [p for p in params if p.requires_grad]
    state = result.optimizer.state
    optimizer_state = [t for p in trainable for t in state.get(p, {}).values() if torch.is_tensor(t)]
    scores = [t for s in allocator.scores.values() for t in s.values()]
    mib = 2**20
    return {
        "strategy": args.strategy,
        "load": args.load if args.strategy == "fsdp2" else "every",
        "checkpoint": bool(args.checkpoint),
        "rss_imports_MiB": round(rss_imports, 1),
        "world_size": int(os.environ["WORLD_SIZE"]),
        "rank": int(os.environ["RANK"]),
        "model": args.model,
        "base_params": sum(p.numel() for p in frozen),
        "adapter_params": sum(p.numel() for p in trainable),
        "base_MiB": round(local_bytes(frozen) / mib, 2),
        "adapters_MiB": round(local_bytes(trainable) / mib, 2),
        "grads_MiB": round(local_bytes(trainable) / mib, 2),
        "optimizer_MiB": round(local_bytes(optimizer_state) / mib, 2),
        "scores_MiB": round(local_bytes(scores) / mib, 2),
        "rss_end_MiB": round(rss_mib(), 1),
        "rss_trimmed_MiB": round(rss_mib(trim=True), 1),
        "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_loaded_MiB": round(loaded_peak, 1),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "commit": commit(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", choices=["fsdp2", "ddp"])
    parser.add_argument("--model", default="smollm2", help="an embedded model name or folder (config only is read)")
    parser.add_argument(
        "--load",
        choices=["rows", "rank0", "every"],
        default="rank0",
        help="fsdp2: rows (with --checkpoint): every process reads its own rows; rank0: process 0 builds or "
        "loads the model, the others get their shards from it; every: each process builds the whole model",
    )
    parser.add_argument("--checkpoint", type=Path, help="a safetensors model folder, read by adarank's loader")
    parser.add_argument("--save-checkpoint", type=Path, help="write --model's configuration, random, there; exit")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path, help="print the markdown table of a JSONL written by earlier runs")
    args = parser.parse_args()
    if args.table:
        print(table(read_records(args.table)))
        return
    if args.save_checkpoint:
        save_checkpoint(args.model, args.save_checkpoint)
        return
    emit(measure(args), args.out)


def save_checkpoint(model: str, folder: Path) -> None:
    """``model``'s configuration, randomly initialised (seed 0), saved as one float32 safetensors file, with
    MiniLM's tokenizer (the loader needs one; the benchmark's tokens are drawn from the vocabulary size)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adarank.config import ModelConfig
    from adarank.io.assets import default_model_path
    from adarank.io.models import read_config

    torch.manual_seed(0)
    built = AutoModelForCausalLM.from_config(read_config(ModelConfig(model)), dtype=torch.float32)
    built.save_pretrained(folder, max_shard_size="10GB")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    tokenizer.eos_token = "[SEP]"
    tokenizer.save_pretrained(folder)
    print(f"wrote {folder}: {sum(p.numel() for p in built.parameters()):,} parameters")


def table(records: list[dict]) -> str:
    keys = [
        "base_MiB",
        "adapters_MiB",
        "grads_MiB",
        "optimizer_MiB",
        "scores_MiB",
        "rss_imports_MiB",
        "rss_end_MiB",
        "rss_trimmed_MiB",
        "peak_rss_loaded_MiB",
        "peak_rss_MiB",
    ]
    lines = ["| strategy | loaded by | processes | process | " + " | ".join(keys) + " |",
             "|---|---|---:|---:|" + "---:|" * len(keys)]  # fmt: skip
    for r in records:
        load = {"rank0": "process 0", "every": "every process", "rows": "own rows"}[r.get("load", "every")]
        load += " (checkpoint)" if r.get("checkpoint") else ""
        cells = [r["strategy"], load, r["world_size"], r["rank"], *(r.get(k, "") for k in keys)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    from adarank.training.engine import exit_distributed

    main()
    exit_distributed(0)
