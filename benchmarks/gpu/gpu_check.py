"""adarank's GPU check (issue 38): one command on one lent H100 in under five minutes, and a CPU dry run.

    bash benchmarks/gpu/gpu_check.sh "$OUT"                     # on the device: installs the carried wheels, runs this
    python benchmarks/gpu/gpu_check.py --out OUT [--budget S]   # this check alone (CUDA required)
    OMP_NUM_THREADS=1 python benchmarks/gpu/gpu_check.py --dry-run --out /tmp/gpu_dry   # CPU, tiny sizes

Sections, in order, each with a time budget; each writes OUT/<section>.json as soon as it ends (or
OUT/<section>.error.json with the traceback, and the check goes on):

  cuda_tests    the CUDA-requiring tests (files with `pytest.mark.gpu`: tests/training/test_fsdp.py's two), pass/fail
                counts (dry run: collected only)
  train_resume  adarank.training.engine.train_loop on a randomly initialised Llama of SmolLM2-135M's shape (bf16
                base, fp32 adapters, budget.shrink on, a checkpoint every 4 steps), uninterrupted, and killed with
                SIGKILL after a checkpoint (before the shrink and after it) then resumed: the final adapters must be
                bitwise equal (torch.equal). Also `python -m adarank train` on a synthetic CSV when `datasets` is
                installed (it is not on the device)
  sync_debug    torch.cuda.set_sync_debug_mode("warn") over train_loop: every warning with its step, the steps
                classed as steady / logging / masking (dry run: host syncs counted with the TorchFunctionMode counter
                of tests/training/test_host_syncs.py)
  step_time     step time (CUDA events, two interleaved rounds of 20 steps per arm) and peak memory of adarank
                AdaLoRA, adarank LoRA, PEFT LoRA and PEFT AdaLoRA at equal final adapter parameters, on SmolLM2-135M's
                and Llama-3.2-1B's shapes (bf16 base, batch 8, sequence 512, q/k/v/o_proj), gradient checkpointing on
                and off on the 1B; the allocator's time per masking step; the final phase after the shrink against
                adarank LoRA at the target rank; the ratios and the pass criteria
  fsdp2_world1  train_loop with strategy fsdp2 under torchrun, one process (NCCL; gloo on the dry run)
  quantized     issue 41's CUDA path: SmolLM2-135M's shape with its blocks' linears quantized by adarank
                (model.quantization nf4 and int8, torchao; bitsandbytes' 41 MiB wheel does not fit the carry),
                the base's CUDA memory against bf16, 6 steps of train_loop (finite losses), and the trained model's
                logits against its dequantized copy with the same adapters (what the merged and PEFT exports use)

OUT/environment.json says what ran where (versions, device); OUT/summary.json gathers every section's status
and headline figures at the end. The dry run's figures are CPU figures of tiny stand-in models: they check
that the code runs, they measure nothing about a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
INIT_RANK, TARGET_RANK, ALPHA = 12, 8, 16
LEARNING_RATE = 1e-3

SMOLLM2_135M = {  # HuggingFaceTB/SmolLM2-135M's config.json, randomly initialised here
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
}
LLAMA_32_1B = {  # meta-llama/Llama-3.2-1B's shapes (its llama3 rope scaling left out: no effect on cost)
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
}
TINY = {  # the dry run's stand-ins
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "tie_word_embeddings": True,
    "max_position_embeddings": 256,
}
TINY_WIDE = {**TINY, "hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 2, "num_hidden_layers": 3}


@dataclass(frozen=True)
class Sizes:
    models: dict[str, dict[str, Any]]
    """step_time's models: label -> LlamaConfig fields (the last one also gets the gradient-checkpointing arms)."""
    batch: int
    seq: int
    answer: int
    """Rows are labelled on their last 1..answer tokens (the scored positions differ by row)."""
    warmup: int
    """Untimed steps per arm before the rounds (and after the shrink)."""
    round_steps: int
    resume_model: dict[str, Any]
    resume_batch: int
    resume_seq: int
    sync_seq: int
    budgets: dict[str, float]
    """Seconds per section; what a section leaves unused goes to the next ones."""
    total: float


GPU = Sizes(
    models={"smollm2-135m": SMOLLM2_135M, "llama-3.2-1b": LLAMA_32_1B},
    batch=8,
    seq=512,
    answer=16,
    warmup=3,
    round_steps=20,
    resume_model=SMOLLM2_135M,
    resume_batch=8,
    resume_seq=256,
    sync_seq=256,
    budgets={
        "cuda_tests": 65,
        "train_resume": 55,
        "sync_debug": 20,
        "step_time": 95,
        "fsdp2_world1": 25,
        "quantized": 20,
    },  # fmt: skip
    total=280,
)
DRY = Sizes(
    models={"smollm2-135m (tiny stand-in)": TINY, "llama-3.2-1b (tiny stand-in)": TINY_WIDE},
    batch=2,
    seq=32,
    answer=4,
    warmup=1,
    round_steps=3,
    resume_model=TINY,
    resume_batch=2,
    resume_seq=32,
    sync_seq=24,
    budgets={
        "cuda_tests": 30,
        "train_resume": 70,
        "sync_debug": 20,
        "step_time": 30,
        "fsdp2_world1": 25,
        "quantized": 20,
    },  # fmt: skip
    total=195,
)
SECTIONS = ("cuda_tests", "train_resume", "sync_debug", "step_time", "fsdp2_world1", "quantized")
MIN_SECONDS = 8.0
"""A section with less time left than this is skipped (its JSON says so)."""


@dataclass
class Ctx:
    out: Path
    dry: bool
    sizes: Sizes
    device: torch.device
    work: Path
    """Scratch space outside OUT (checkpoints, model folders): nothing large comes back."""
    start: float = field(default_factory=time.monotonic)
    deadline: float = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self, deadline: float) -> float:
        return deadline - time.monotonic()


def log(ctx: Ctx | None, message: str) -> None:
    stamp = f"[{ctx.elapsed():6.1f}s] " if ctx is not None else ""
    print(f"{stamp}{message}", flush=True)


# ---------------------------------------------------------------- models, data, subprocesses


def llama(fields: dict[str, Any], device: torch.device | str, attn: str = "sdpa", seed: int = 0) -> Any:
    """A randomly initialised LlamaForCausalLM of ``fields``, built on ``device`` with bf16 weights."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**fields), dtype=torch.bfloat16, attn_implementation=attn)
    return model


def sharing_copy(template: torch.nn.Module) -> Any:
    """A copy of ``template`` whose modules are new but whose parameters and buffers are the template's own
    tensors: every arm of step_time trains on the same frozen base, held in memory once."""
    memo: dict[int, Any] = {id(t): t for t in (*template.parameters(), *template.buffers())}
    return copy.deepcopy(template, memo)


def token_rows(n: int, seq: int, answer: int, vocab: int, seed: int = 0, ragged: bool = False) -> list[dict]:
    """Synthetic rows: random ids, labels on each row's last 1..answer tokens (-100 elsewhere); with ``ragged``
    the rows have different lengths (collated with right padding, as GenerationCollator pads)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = seq - (i % 5) * max(1, seq // 16) if ragged else seq
        ids = torch.randint(5, vocab, (length,), generator=generator)
        labels = torch.full((length,), -100)
        k = 1 + i % answer
        labels[-k:] = ids[-k:]
        rows.append({"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long), "labels": labels})
    return rows


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Right-pad and stack (pad id 0, attention 0, label -100)."""
    width = max(len(r["input_ids"]) for r in rows)
    pads = {"input_ids": 0, "attention_mask": 0, "labels": -100}
    return {
        key: torch.stack([torch.nn.functional.pad(r[key], (0, width - len(r[key])), value=pad) for r in rows])
        for key, pad in pads.items()
    }


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """As the engine moves a batch: from pinned memory without blocking the host on a GPU."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


CHILDREN: set[subprocess.Popen] = set()
"""Running subprocesses (each in a session of its own): killed, with their children, if the check is stopped."""


def start(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env or child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    CHILDREN.add(proc)
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def finish(proc: subprocess.Popen, deadline: float, began: float) -> dict[str, Any]:
    """Wait for ``proc`` until ``deadline`` (then kill its process group); its exit and output tail."""
    try:
        output, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_group(proc)
        output, _ = proc.communicate()
        timed_out = True
    CHILDREN.discard(proc)
    return {
        "rc": proc.returncode,
        "timed_out": timed_out,
        "seconds": round(time.monotonic() - began, 1),
        "output_tail": (output or "")[-2500:],
    }


def run(cmd: list[str], deadline: float, env: dict[str, str] | None = None, cwd: Path = ROOT) -> dict[str, Any]:
    began = time.monotonic()
    return {"cmd": " ".join(cmd), **finish(start(cmd, env, cwd), deadline, began)}


def worker_cmd(ctx: Ctx, kind: str, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--run-dir",
        str(run_dir),
        *(["--dry-run"] if ctx.dry else []),
        *extra,
    ]


# ---------------------------------------------------------------- a. cuda_tests


def cuda_tests(ctx: Ctx, deadline: float) -> dict[str, Any]:
    files = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if "pytest.mark.gpu" in p.read_text()
    )
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files]
    if ctx.dry:
        cmd.append("--collect-only")
    done = run(cmd, deadline)
    text = done["output_tail"]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed)", text)}
    collected = re.search(r"(\d+)(?:/\d+)? tests? collected", text)
    result = {"files": files, "marker": "gpu", **done, "counts": counts}
    if ctx.dry:
        result["skipped"] = "no CUDA: the tests were collected, not run"
        result["collected"] = int(collected.group(1)) if collected else None
        result["ok"] = done["rc"] == 0
    else:
        result["ok"] = done["rc"] == 0 and counts.get("passed", 0) > 0 and not counts.get("failed")
    return result


# ---------------------------------------------------------------- b. train_resume


RESUME_STEPS, RESUME_SAVE = 16, 4
RESUME_BUDGET = {"init_rank": INIT_RANK, "target_rank": TARGET_RANK, "t_init": 2, "t_final": 5, "mask_interval": 2}
"""16 steps: masking at 4, 6, 8, 10, the final masks and the shrink at 11; checkpoints at 4, 8, 12, 16."""
KILLS = {"kill10": 10, "kill14": 14}
"""Killed right after step 10 (resumes from checkpoint 8: masks and shrink again) and after step 14 (from
checkpoint 12, taken after the shrink)."""


def resume_worker(args: argparse.Namespace) -> None:
    """One process of train_resume: trains (resuming if asked), SIGKILLs itself after ``--stop-at``, or
    writes the final trainable tensors and rank masks (final.pt) and the allocation (final.json)."""
    from adarank import BudgetConfig, RankAllocator, inject_adapters
    from adarank.training.engine import LoopConfig, train_loop

    sizes = DRY if args.dry_run else GPU
    device = torch.device("cpu" if args.dry_run else "cuda")
    torch.use_deterministic_algorithms(True, warn_only=True)  # with CUBLAS_WORKSPACE_CONFIG from the parent
    model = llama(sizes.resume_model, device, attn="eager")  # eager attention: a deterministic backward
    adapters = inject_adapters(model, TARGETS, rank=INIT_RANK, alpha=ALPHA, seed=0)
    allocator = RankAllocator(adapters, BudgetConfig(**RESUME_BUDGET, shrink=True))
    rows = token_rows(
        RESUME_STEPS * sizes.resume_batch, sizes.resume_seq, sizes.answer, sizes.resume_model["vocab_size"]
    )
    config = LoopConfig(
        steps=RESUME_STEPS,
        batch_size=sizes.resume_batch,
        learning_rate=LEARNING_RATE,
        seed=0,
        save_steps=RESUME_SAVE,
        checkpoint_dir=str(args.run_dir / "checkpoints"),
        resume=args.resume,
        log_steps=4,
    )

    def on_step(step: int, _: Any) -> None:
        if step == args.stop_at:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inner, result = train_loop(model, allocator, rows, collate, config, on_step=on_step)
    tensors = {n: p.detach().cpu().clone() for n, p in inner.named_parameters() if p.requires_grad}
    tensors |= {n: b.detach().cpu().clone() for n, b in inner.named_buffers() if n.endswith("rank_mask")}
    torch.save(tensors, args.run_dir / "final.pt")
    nondeterministic = sorted({str(w.message).splitlines()[0][:200] for w in caught if "determinis" in str(w.message)})
    (args.run_dir / "final.json").write_text(
        json.dumps(
            {
                "ranks": allocator.ranks(),
                "history": allocator.history,
                "log": result.log_history,
                "train_loss": result.train_loss,
                "dtypes": sorted({str(p.dtype) for p in inner.parameters()}),
                "adapter_dtypes": sorted({str(t.dtype) for n, t in tensors.items() if not n.endswith("rank_mask")}),
                "nondeterministic_op_warnings": nondeterministic,
            }
        )
    )


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    """Whether run b ended bitwise equal to run a: tensors (torch.equal), ranks, masking history and log."""
    ta, tb = torch.load(a / "final.pt"), torch.load(b / "final.pt")
    ja, jb = json.loads((a / "final.json").read_text()), json.loads((b / "final.json").read_text())
    unequal = sorted(n for n in ta.keys() & tb.keys() if ta[n].shape != tb[n].shape or not torch.equal(ta[n], tb[n]))
    worst = max(
        (float((ta[n].float() - tb[n].float()).abs().max()) for n in unequal if ta[n].shape == tb[n].shape),
        default=0.0,
    )
    return {
        "tensors": len(ta),
        "same_names": ta.keys() == tb.keys(),
        "unequal_tensors": unequal[:10],
        "n_unequal": len(unequal),
        "max_abs_difference": worst,
        "ranks_equal": ja["ranks"] == jb["ranks"],
        "history_equal": ja["history"] == jb["history"],
        "log_equal": ja["log"] == jb["log"],
        "bitwise_equal": ta.keys() == tb.keys() and not unequal and ja["ranks"] == jb["ranks"],
    }


def train_resume(ctx: Ctx, deadline: float) -> dict[str, Any]:
    work = ctx.work / "resume"
    env = child_env(CUBLAS_WORKSPACE_CONFIG=":4096:8")

    def launch(commands: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
        """Run ``commands``: side by side on the GPU (small processes), one at a time on the CPU."""
        if ctx.dry:
            return {name: finish(start(cmd, env), deadline, time.monotonic()) for name, cmd in commands.items()}
        began = time.monotonic()
        procs = {name: start(cmd, env) for name, cmd in commands.items()}
        return {name: finish(proc, deadline, began) for name, proc in procs.items()}

    first = {"full": [], **{k: ["--stop-at", str(s)] for k, s in KILLS.items()}}
    for name in first:
        (work / name).mkdir(parents=True, exist_ok=True)
    runs = launch({name: worker_cmd(ctx, "resume", work / name, *extra) for name, extra in first.items()})
    for name in KILLS:  # what the killed runs left; they resume from the latest complete checkpoint
        left = sorted((work / name / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        runs[name]["checkpoints_left"] = [p.name for p in left]
    runs |= launch({f"{k}_resumed": worker_cmd(ctx, "resume", work / k, "--resume") for k in KILLS})
    result: dict[str, Any] = {
        "model": "SmolLM2-135M shape, random init" if not ctx.dry else "tiny stand-in",
        "base_dtype": "bfloat16",
        "attention": "eager",
        "deterministic": "use_deterministic_algorithms(warn_only), CUBLAS_WORKSPACE_CONFIG=:4096:8",
        "steps": RESUME_STEPS,
        "save_steps": RESUME_SAVE,
        "budget": RESUME_BUDGET,
        "batch": ctx.sizes.resume_batch,
        "seq": ctx.sizes.resume_seq,
        "kills": KILLS,
        "runs": {
            k: {x: y for x, y in v.items() if x != "output_tail" or v["rc"] not in (0, -9)} for k, v in runs.items()
        },
    }
    for name in KILLS:
        result[f"{name}_killed_by_sigkill"] = runs[name]["rc"] == -signal.SIGKILL
    full = work / "full"
    if (full / "final.json").is_file():
        info = json.loads((full / "final.json").read_text())
        result["full_run"] = {
            k: info[k] for k in ("ranks", "train_loss", "dtypes", "adapter_dtypes", "nondeterministic_op_warnings")
        }
        result["full_run"]["total_rank"] = sum(info["ranks"].values())
        result["full_run"]["masking_steps"] = [e["step"] for e in info["history"]]
        for name in KILLS:
            if (work / name / "final.json").is_file():
                result[f"{name}_vs_full"] = compare_runs(full, work / name)
    result["ok"] = all(result.get(f"{k}_vs_full", {}).get("bitwise_equal") for k in KILLS) and all(
        result[f"{k}_killed_by_sigkill"] for k in KILLS
    )
    result["adarank_train_csv"] = adarank_train_csv(ctx, deadline)
    return result


def save_model_folder(folder: Path, fields: dict[str, Any], words: int) -> int:
    """A model folder as ``adarank train`` reads one: a WordLevel tokenizer (tokenizers) over ``words`` words
    plus specials, saved as PreTrainedTokenizerFast, and a random Llama of ``fields`` with that vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = {token: i for i, token in enumerate(specials + [f"w{i}" for i in range(words)])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(**{**fields, "vocab_size": len(vocab)}, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    LlamaForCausalLM(config).save_pretrained(folder)
    return len(vocab)


def adarank_train_csv(ctx: Ctx, deadline: float) -> dict[str, Any]:
    """``python -m adarank train`` on a synthetic prompt/response CSV, when its readers are installed."""
    missing = [m for m in ("datasets", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        return {
            "skipped": f"{', '.join(missing)} not installed: `adarank train` reads a CSV through "
            "datasets.load_dataset and draws its report with matplotlib; datasets with pyarrow and pandas is "
            "larger than the carry limit (reports/gpu.md). The engine ran through train_loop above."
        }
    if ctx.left(deadline) < 20:
        return {"skipped": "no time left in the section"}
    fields = ctx.sizes.resume_model
    folder = ctx.work / "csv-model"
    words = min(fields["vocab_size"], 4096) - 4
    save_model_folder(folder, fields, words)
    data = ctx.out / "tmp"
    data.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    lines = ["prompt,response"]
    for _ in range(80):
        ids = torch.randint(0, words, (23,), generator=generator).tolist()
        lines.append(" ".join(f"w{i}" for i in ids[:20]) + "," + " ".join(f"w{i}" for i in ids[20:]))
    csv = data / "pairs.csv"
    csv.write_text("\n".join(lines) + "\n")
    out = ctx.work / "csv-run"
    cmd = [
        sys.executable,
        "-m",
        "adarank",
        "train",
        f"model.name_or_path={folder}",
        "model.dtype=bfloat16",
        "data.format=generation",
        f"data.dataset={csv}",
        "data.prompt_field=prompt",
        "data.response_field=response",
        "data.max_length=32",
        "data.max_eval_samples=8",
        f"adapter.target_modules=[{','.join(TARGETS)}]",
        "train.max_steps=16",
        f"train.batch_size={ctx.sizes.resume_batch}",
        "train.save_steps=4",
        *(f"budget.{k}={v}" for k, v in RESUME_BUDGET.items()),
        "wandb.mode=disabled",
        f"output_dir={out}",
    ]
    done = run(cmd, deadline)
    metrics = out / "metrics.json"
    done["metrics"] = json.loads(metrics.read_text()) if metrics.is_file() else None
    done["ok"] = done["rc"] == 0 and metrics.is_file()
    if done["ok"]:
        done.pop("output_tail")
    return done


# ---------------------------------------------------------------- c. sync_debug


SYNC_STEPS, SYNC_LOG = 30, 10
SYNC_BUDGET = {"init_rank": INIT_RANK, "target_rank": TARGET_RANK, "t_init": 3, "t_final": 8, "mask_interval": 4}
"""30 steps: masking at 7, 11, 15, 19, final masks and shrink at 22; logging at 10, 20, 30."""


def _load_sync_counter() -> Any:
    """The host-sync counter of tests/training/test_host_syncs.py, imported by path."""
    for folder in (ROOT / "tests", ROOT / "tests" / "training"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("_gpu_check_host_syncs", ROOT / "tests/training/test_host_syncs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SyncCounter


def _origin(stack: list[traceback.FrameSummary]) -> tuple[str, bool]:
    """Where a warning's call was written (the innermost frame outside torch and this file's hooks) and
    whether that frame is adarank's."""
    package = str(ROOT / "adarank")
    for frame in reversed(stack):
        name = frame.filename
        if "/torch/" in name or name.endswith("warnings.py") or name == __file__:
            continue
        return f"{Path(name).name}:{frame.lineno} ({frame.name})", name.startswith(package)
    return "?", False


def step_kind(step: int, masking: set[int]) -> str:
    """steady, or why not: setup (before step 2), masking, logging, last."""
    if step <= 1:
        return "setup"
    if step in masking:
        return "masking"
    if step % SYNC_LOG == 0:
        return "logging"
    return "last" if step >= SYNC_STEPS else "steady"


def sync_run(ctx: Ctx, importance: Any, accum: int, counter_cls: Any) -> dict[str, Any]:
    """One train_loop run with every host sync recorded against its optimizer step."""
    import adarank.training.engine as engine
    from adarank import BudgetConfig, RankAllocator, inject_adapters
    from adarank.training.engine import LoopConfig, train_loop

    fields = ctx.sizes.resume_model
    model = llama(fields, ctx.device)
    adapters = inject_adapters(model, TARGETS, rank=INIT_RANK, alpha=ALPHA, seed=0)
    allocator = RankAllocator(adapters, BudgetConfig(**SYNC_BUDGET), importance)
    rows = token_rows(64, ctx.sizes.sync_seq, ctx.sizes.answer, fields["vocab_size"], ragged=True)
    config = LoopConfig(
        steps=SYNC_STEPS,
        batch_size=ctx.sizes.batch,
        grad_accum_steps=accum,
        learning_rate=LEARNING_RATE,
        log_steps=SYNC_LOG,
    )
    events: list[tuple[int, str, str, bool]] = []  # (step, message, origin, adarank's)
    pending: list[tuple[str, list[traceback.FrameSummary]]] = []
    counter = counter_cls() if counter_cls is not None else None
    current = {"step": 0}
    original = engine.batch_indices

    def flush() -> None:  # what was warned since the last mark belongs to the step then running
        for message, stack in pending:
            where, ours = _origin(stack)
            events.append((current["step"], message, where, ours))
        pending.clear()

    def marking(n_rows: int, seed: int, step: int, micro: int, *rest: int) -> list[int]:
        if micro == 0:
            flush()
            current["step"] = step
            if counter is not None:
                counter.step = step
        return original(n_rows, seed, step, micro, *rest)

    engine.batch_indices = marking
    began = time.monotonic()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")

            def hook(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
                caught.append(warnings.WarningMessage(message, category, filename, lineno, file, line))
                pending.append((str(message).splitlines()[0][:160], traceback.extract_stack()[:-1]))

            warnings.showwarning = hook  # catch_warnings puts the original back
            if ctx.device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    train_loop(model, allocator, rows, collate, config)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            else:
                assert counter is not None
                with counter:
                    train_loop(model, allocator, rows, collate, config)
            flush()
    finally:
        engine.batch_indices = original
    others = sorted({m for _, m, _, _ in events if "synchroniz" not in m})[:10]
    if counter is not None:  # the CPU counter: adarank's own syncing calls, as the test counts them
        syncs = [(step, name, where, True) for step, name, where in counter.calls]
    else:
        syncs = [e for e in events if "synchroniz" in e[1]]
    masking = {e["step"] for e in allocator.history}
    grouped: dict[tuple[str, str, bool], list[int]] = {}
    for step, message, where, ours in syncs:
        grouped.setdefault((message, where, ours), []).append(step)
    steady = [e for e in syncs if step_kind(e[0], masking) == "steady"]
    return {
        "importance_task_only": importance.task_only,
        "grad_accum_steps": accum,
        "seconds": round(time.monotonic() - began, 1),
        "masking_steps": sorted(masking),
        "logging_steps": list(range(SYNC_LOG, SYNC_STEPS + 1, SYNC_LOG)),
        "steady_steps": [s for s in range(1, SYNC_STEPS + 1) if step_kind(s, masking) == "steady"],
        "total": len(syncs),
        "by_step_kind": {
            k: sum(1 for e in syncs if step_kind(e[0], masking) == k)
            for k in ("steady", "logging", "masking", "setup", "last")
        },
        "steady_total": len(steady),
        "steady_from_adarank": sum(1 for e in steady if e[3]),
        "syncs": [
            {
                "what": m,
                "origin": w,
                "adarank": o,
                "count": len(s),
                "steps": sorted(set(s)),
                "step_kinds": sorted({step_kind(x, masking) for x in s}),
            }
            for (m, w, o), s in grouped.items()
        ],
        "other_warnings": others,
    }


def sync_debug(ctx: Ctx, deadline: float) -> dict[str, Any]:
    from adarank.config import ImportanceConfig

    counter_cls = _load_sync_counter() if ctx.dry else None
    result: dict[str, Any] = {
        "method": "torch.cuda.set_sync_debug_mode('warn'), warnings recorded with their Python stack"
        if not ctx.dry
        else "CPU dry run: adarank's own syncing calls, counted by tests/training/test_host_syncs.py's SyncCounter",
        "model": "SmolLM2-135M shape, bf16 base" if not ctx.dry else "tiny stand-in, bf16 base",
        "steps": SYNC_STEPS,
        "log_steps": SYNC_LOG,
        "budget": SYNC_BUDGET,
        "batch": ctx.sizes.batch,
        "rows": f"ragged, up to {ctx.sizes.sync_seq} tokens, right-padded",
        "runs": {},
    }
    variants = {"default": (ImportanceConfig(), 1), "task_only_accum2": (ImportanceConfig(task_only=True), 2)}
    for label, (importance, accum) in variants.items():
        if ctx.left(deadline) < 5:
            result["runs"][label] = {"skipped": "no time left in the section"}
            continue
        result["runs"][label] = sync_run(ctx, importance, accum, counter_cls)
        free(ctx)
    done = [r for r in result["runs"].values() if "steady_total" in r]
    result["ok"] = bool(done) and all(r["steady_total"] == 0 for r in done)
    result["ok_adarank_only"] = bool(done) and all(r["steady_from_adarank"] == 0 for r in done)
    return result


# ---------------------------------------------------------------- d. step_time


def _tensor_bytes(tensors: Any) -> int:
    """Bytes of the distinct CUDA tensors among ``tensors`` (what max_memory_allocated counts)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type == "cuda" and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def linear_schedule(optimizer: Any, total: int, warmup_ratio: float = 0.05) -> Any:
    """The engine's learning-rate schedule: linear warm-up over 5% of the steps, then linear decay to 0."""
    warmup = int(warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Arm:
    """One configuration under test: a model sharing the template's base, its optimizer and its own steps."""

    def __init__(self, name: str, model: Any, optimizer: Any, rows: list[dict], ctx: Ctx, total: int) -> None:
        self.name, self.model, self.optimizer, self.rows, self.ctx = name, model, optimizer, rows, ctx
        self.scheduler = linear_schedule(optimizer, total)
        self.step_no = 0
        self.masking: set[int] = set()
        self.allocator_ms: list[tuple[int, float]] = []
        self.rounds: list[dict[str, Any]] = []
        self.loss_sum = torch.zeros((), device=ctx.device, dtype=torch.float64)

    def batch(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def trainables(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def state_bytes(self) -> int:
        """What this arm holds beyond the shared base: trainable parameters, optimizer and allocator state."""
        state = [t for s in self.optimizer.state.values() for t in s.values()]
        return _tensor_bytes([*self.trainables(), *state, *self.extra_state()])

    def extra_state(self) -> list[torch.Tensor]:
        return []

    def step(self) -> None:
        raise NotImplementedError


class AdarankArm(Arm):
    """train_loop's optimizer step (one process, no accumulation, no logging), its parts called as it calls them."""

    def __init__(self, name: str, model: Any, allocator: Any, rows: list[dict], ctx: Ctx, total: int) -> None:
        from adarank import param_groups

        optimizer = torch.optim.AdamW(param_groups(model, LEARNING_RATE))
        super().__init__(name, model, optimizer, rows, ctx, total)
        self.allocator = allocator
        allocator.begin(total)
        from adarank.core.schedule import is_masking_step

        assert allocator.plan is not None
        self.masking = {s for s in range(1, total + 1) if is_masking_step(s, allocator.plan)}
        self.final_start = allocator.plan.final_start if allocator.plan.adapts else None
        self.trainable = self.trainables()

    def extra_state(self) -> list[torch.Tensor]:
        return [t for s in self.allocator.scores.values() for t in s.values()]

    def step(self) -> None:
        from adarank.core.optim import clip_coefficient
        from adarank.core.regularization import orthogonality_penalty
        from adarank.training.engine import batch_indices, host_batch

        self.step_no += 1
        step, device, allocator = self.step_no, self.ctx.device, self.allocator
        adapters = list(allocator.adapters.values())
        rows = batch_indices(len(self.rows), 0, step, 0, 0, 1, self.ctx.sizes.batch, 1)
        batch = to_device(host_batch(self.model, self.rows, collate, rows), device)
        loss = self.model(**batch).loss
        if adapters:
            penalty = orthogonality_penalty(adapters, live_only=allocator.finalized)
            term = 0.1 * penalty
            allocator.add_penalty_gradient_(term)
            loss = loss + term.to(loss.dtype)
        self.loss_sum += loss.detach()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        if allocator.penalty_grads:
            allocator.scale_penalty_gradient_(clip_coefficient(norm, 1.0))
        self.optimizer.step()
        self.scheduler.step()
        if step in self.masking:  # the allocator's own time on a masking step (synchronised around it)
            sync(device)
            began = time.perf_counter()
            event = allocator.step(step, self.optimizer, self.model)
            sync(device)
            self.allocator_ms.append((step, (time.perf_counter() - began) * 1e3))
        else:
            event = allocator.step(step, self.optimizer, self.model)
        if event is not None and event["final"]:
            self.trainable = self.trainables()
        self.optimizer.zero_grad(set_to_none=True)


class PeftArm(Arm):
    """PEFT's LoRA or AdaLoRA on the same batches (head on the scored positions, found on the host, as
    studies/peft_run.py trains them), AdamW, clipping to 1, and AdaLoRA's update_and_allocate after each
    optimizer step, before the gradients are zeroed."""

    def __init__(self, name: str, model: Any, adalora: bool, rows: list[dict], ctx: Ctx, total: int) -> None:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
        super().__init__(name, model, optimizer, rows, ctx, total)
        self.adalora = adalora
        self.base = model.get_base_model()

    def extra_state(self) -> list[torch.Tensor]:
        allocator = getattr(self.model.base_model, "rankallocator", None)
        if allocator is None:
            return []
        return [t for v in vars(allocator).values() if isinstance(v, dict) for t in v.values()]

    def step(self) -> None:
        from adarank.training.batches import only_scored_logits
        from adarank.training.engine import batch_indices

        self.step_no += 1
        rows = batch_indices(len(self.rows), 0, self.step_no, 0, 0, 1, self.ctx.sizes.batch, 1)
        batch = to_device(only_scored_logits(self.base, collate([self.rows[i] for i in rows])), self.ctx.device)
        loss = self.model(**batch).loss  # AdaLoRA adds its orthogonality penalty inside forward
        self.loss_sum += loss.detach()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainables(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        if self.adalora:
            self.model.base_model.update_and_allocate(self.step_no)
        self.optimizer.zero_grad(set_to_none=True)


@dataclass(frozen=True)
class Schedule:
    """The AdaLoRA arms' schedule: ``warmup`` untimed steps, two timed rounds in the decay, the final masks
    (and the shrink) at the step after them, ``warmup`` untimed steps, then two timed final-phase rounds."""

    warmup: int
    round_steps: int

    @property
    def final_start(self) -> int:
        return self.warmup + 2 * self.round_steps + 1

    @property
    def total(self) -> int:
        return self.final_start + self.warmup + 2 * self.round_steps

    @property
    def t_init(self) -> int:
        return max(1, self.warmup - 1)

    @property
    def mask_interval(self) -> int:
        return max(2, self.round_steps // 2)


def build_arms(ctx: Ctx, template: Any, rows: list[dict], plan: Schedule, with_gc: bool) -> tuple[dict, dict]:
    from peft import AdaLoraConfig, LoraConfig, get_peft_model

    from adarank import BudgetConfig, RankAllocator, inject_adapters

    costs: list[int] = []
    info: dict[str, Any] = {}
    arms: dict[str, Arm] = {}
    gc_kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}

    def adarank_arm(name: str, adaptive: bool, gc_on: bool) -> None:
        model = sharing_copy(template)
        if gc_on:
            model.gradient_checkpointing_enable(**gc_kwargs)
        adapters = inject_adapters(model, TARGETS, rank=INIT_RANK if adaptive else TARGET_RANK, alpha=ALPHA, seed=0)
        triplet_costs = [a.triplet_cost for a in adapters.values()]
        costs[:] = triplet_costs
        if adaptive:  # AdaLoRA 12 -> the parameters of LoRA at rank 8, per-parameter selection, shrink on
            budget = BudgetConfig(
                init_rank=INIT_RANK,
                target_rank=TARGET_RANK,
                target_params=str(TARGET_RANK * sum(triplet_costs)),
                t_init=plan.t_init,
                t_final=plan.total - plan.final_start,
                mask_interval=plan.mask_interval,
                shrink=True,
            )
        else:
            budget = BudgetConfig(schedule="constant", init_rank=TARGET_RANK, target_rank=TARGET_RANK)
        allocator = RankAllocator(adapters, budget)
        model.train()
        arms[name] = AdarankArm(name, model, allocator, rows, ctx, plan.total)
        info[name] = {
            "initial_adapter_params": sum(p.numel() for p in arms[name].trainables()),
            "adapter_dtype": str(next(iter(adapters.values())).singular_values.dtype),
            "gradient_checkpointing": gc_on,
            "budget": {
                k: getattr(budget, k)
                for k in ("schedule", "init_rank", "target_rank", "target_params", "t_init", "t_final", "mask_interval")
            },
        }

    def peft_arm(name: str, adaptive: bool, gc_on: bool) -> None:
        base = sharing_copy(template)
        if gc_on:
            base.gradient_checkpointing_enable(**gc_kwargs)
        common = {"lora_alpha": ALPHA, "lora_dropout": 0.0, "target_modules": TARGETS, "task_type": "CAUSAL_LM"}
        if adaptive:
            config: Any = AdaLoraConfig(
                init_r=INIT_RANK,
                target_r=TARGET_RANK,
                tinit=plan.t_init,
                tfinal=plan.total - plan.final_start,
                deltaT=plan.mask_interval,
                total_step=plan.total,
                beta1=0.85,
                beta2=0.85,
                orth_reg_weight=0.1,
                **common,
            )
        else:
            config = LoraConfig(r=TARGET_RANK, **common)
        model = get_peft_model(base, config)
        model.train()
        arms[name] = PeftArm(name, model, adaptive, rows, ctx, plan.total)
        if adaptive:  # PEFT masks at step % deltaT == 0 in the decay, and fixes the masks at total - tfinal
            decay = range(plan.t_init + 1, plan.final_start)
            arms[name].masking = {s for s in decay if s % plan.mask_interval == 0} | {plan.final_start}
        lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
        info[name] = {
            "initial_adapter_params": sum(p.numel() for p in lora),
            "adapter_dtype": str(lora[0].dtype),
            "gradient_checkpointing": gc_on,
            "peft_config": {
                k: getattr(config, k)
                for k in ("r", "init_r", "target_r", "tinit", "tfinal", "deltaT", "total_step")
                if hasattr(config, k)
            },
        }

    adarank_arm("adarank_adalora", True, False)
    adarank_arm("adarank_lora", False, False)
    peft_arm("peft_lora", False, False)
    peft_arm("peft_adalora", True, False)
    if with_gc:
        adarank_arm("adarank_adalora_gc", True, True)
        peft_arm("peft_lora_gc", False, True)
    info["_final_budget_params"] = TARGET_RANK * sum(costs)
    base = {t.data_ptr() for t in (*template.parameters(), *template.buffers())}
    info["_base_shared"] = {  # every arm's frozen tensors are the template's own (one copy in memory)
        name: all(p.data_ptr() in base for p in arm.model.parameters() if not p.requires_grad)
        for name, arm in arms.items()
    }
    return arms, info


def time_round(ctx: Ctx, arm: Arm, steps: int, arms: dict[str, Arm], label: str) -> dict[str, Any]:
    """``steps`` steps of ``arm``: per-step milliseconds (CUDA events, no sync inside the round; perf_counter
    on CPU) and the peak memory of the round, less what the other arms hold (their adapters and optimizer
    state: the base is shared), so each arm's peak is what it would be alone."""
    cuda = ctx.device.type == "cuda"
    others = sum(a.state_bytes() for a in arms.values() if a is not arm)
    sync(ctx.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        events[0].record()
    stamps = [time.perf_counter()]
    first = arm.step_no + 1
    for i in range(steps):
        arm.step()
        if cuda:
            events[i + 1].record()
        else:
            stamps.append(time.perf_counter())
    sync(ctx.device)
    wall = time.perf_counter() - stamps[0]
    if cuda:
        ms = [events[i].elapsed_time(events[i + 1]) for i in range(steps)]
    else:
        ms = [(stamps[i + 1] - stamps[i]) * 1e3 for i in range(steps)]
    record: dict[str, Any] = {
        "round": label,
        "first_step": first,
        "steps": steps,
        "wall_s": round(wall, 3),
        "ms": [round(x, 3) for x in ms],
    }
    record["masking_steps"] = sorted(s for s in arm.masking if first <= s < first + steps)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        record["peak_total_mib"] = round(peak / 2**20, 1)
        record["peak_mib"] = round((peak - others) / 2**20, 1)
    arm.rounds.append(record)
    return record


def summarize(arm: Arm, rounds: tuple[str, ...]) -> dict[str, Any]:
    chosen = [r for r in arm.rounds if r["round"] in rounds]
    steady = [ms for r in chosen for i, ms in enumerate(r["ms"]) if r["first_step"] + i not in arm.masking]
    every = [ms for r in chosen for ms in r["ms"]]
    out: dict[str, Any] = {"steps": len(every)}
    if every:
        out |= {
            "median_ms": round(statistics.median(steady or every), 3),
            "mean_ms": round(statistics.fmean(every), 3),
            "steady_steps": len(steady),
        }
    peaks = [r["peak_mib"] for r in chosen if "peak_mib" in r]
    if peaks:
        out["peak_mib"] = max(peaks)
    return out


def ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    if key in a and key in b and b[key]:
        return round(a[key] / b[key], 4)
    return None


def step_time_model(ctx: Ctx, label: str, fields: dict[str, Any], with_gc: bool, deadline: float) -> dict[str, Any]:
    sizes = ctx.sizes
    plan = Schedule(sizes.warmup, sizes.round_steps)
    began = time.monotonic()
    template = llama(fields, ctx.device)
    template.requires_grad_(False)
    rows = token_rows(64, sizes.seq, sizes.answer, fields["vocab_size"])
    arms, info = build_arms(ctx, template, rows, plan, with_gc)
    result: dict[str, Any] = {
        "model": label,
        "config": fields,
        "base_params": sum(p.numel() for p in template.parameters()),
        "base_dtype": str(template.dtype),
        "batch": sizes.batch,
        "seq": sizes.seq,
        "labelled_tokens_per_row": f"1..{sizes.answer} (head on the scored positions only, every arm)",
        "schedule": {
            "warmup": plan.warmup,
            "round_steps": plan.round_steps,
            "t_init": plan.t_init,
            "mask_interval": plan.mask_interval,
            "final_start": plan.final_start,
            "total": plan.total,
        },
        "arms": info,
        "build_s": round(time.monotonic() - began, 1),
        "skipped": [],
    }
    for arm in arms.values():  # compile / autotune / allocator warm-up, untimed
        for _ in range(plan.warmup):
            arm.step()
    sync(ctx.device)
    per_step: dict[str, float] = {}
    for r in ("decay-1", "decay-2"):
        for name, arm in arms.items():
            guess = per_step.get(name, 0.0) * plan.round_steps
            if time.monotonic() + guess + 2 > deadline:
                result["skipped"].append(f"{name} {r}: section budget")
                continue
            rec = time_round(ctx, arm, plan.round_steps, arms, r)
            per_step[name] = rec["wall_s"] / plan.round_steps
    adalora, lora = arms["adarank_adalora"], arms["adarank_lora"]
    assert isinstance(adalora, AdarankArm)
    final_rounds: tuple[str, ...] = ()
    if adalora.step_no == plan.warmup + 2 * plan.round_steps and lora.step_no == adalora.step_no:
        while adalora.step_no < plan.final_start:  # the final masks and the shrink, timed by the arm
            adalora.step()
        shrink_ms = [ms for s, ms in adalora.allocator_ms if s == plan.final_start]
        result["final_masks_and_shrink_ms"] = round(shrink_ms[0], 2) if shrink_ms else None
        result["after_shrink"] = {
            "total_rank": sum(adalora.allocator.ranks().values()),
            "adapter_params": sum(p.numel() for p in adalora.trainables()),
            "lora_adapter_params": sum(p.numel() for p in lora.trainables()),
            "modules_left": len(adalora.allocator.adapters),
        }
        for arm in (adalora, lora):
            for _ in range(plan.warmup):
                arm.step()
        final = {"adarank_adalora": adalora, "adarank_lora": lora}
        for r in ("final-1", "final-2"):
            for name, arm in final.items():
                if time.monotonic() + per_step.get(name, 0.0) * plan.round_steps + 2 > deadline:
                    result["skipped"].append(f"{name} {r}: section budget")
                    continue
                time_round(ctx, arm, plan.round_steps, arms, r)
        final_rounds = ("final-1", "final-2")
    else:
        result["skipped"].append("final phase: the decay rounds did not all run")
    decay = ("decay-1", "decay-2")
    stats = {name: summarize(arm, decay) for name, arm in arms.items()}
    result["decay"] = stats
    result["rounds"] = {name: arm.rounds for name, arm in arms.items()}
    result["allocator_ms_per_masking_step"] = [
        {"step": s, "ms": round(ms, 3)} for s, ms in adalora.allocator_ms if s != plan.final_start
    ]
    if adalora.allocator_ms:
        masking = [ms for s, ms in adalora.allocator_ms if s != plan.final_start]
        result["allocator_ms_median"] = round(statistics.median(masking), 3) if masking else None
    a = stats["adarank_adalora"]
    result["ratios"] = {
        "step_time": {
            f"adarank_adalora/{k}": ratio(a, stats[k], "median_ms")
            for k in ("adarank_lora", "peft_lora", "peft_adalora")
        },
        "step_time_mean_with_masking": {
            f"adarank_adalora/{k}": ratio(a, stats[k], "mean_ms") for k in ("adarank_lora", "peft_lora", "peft_adalora")
        },
        "peak_memory": {
            f"adarank_adalora/{k}": ratio(a, stats[k], "peak_mib")
            for k in ("adarank_lora", "peft_lora", "peft_adalora")
        },
        "peft_adalora/peft_lora": ratio(stats["peft_adalora"], stats["peft_lora"], "median_ms"),
    }
    if with_gc:
        result["ratios"]["gradient_checkpointing"] = {
            "adarank_adalora_gc/adarank_adalora": ratio(stats["adarank_adalora_gc"], a, "median_ms"),
            "peft_lora_gc/peft_lora": ratio(stats["peft_lora_gc"], stats["peft_lora"], "median_ms"),
            "adarank_adalora_gc/peft_lora_gc": ratio(stats["adarank_adalora_gc"], stats["peft_lora_gc"], "median_ms"),
            "memory adarank_adalora_gc/adarank_adalora": ratio(stats["adarank_adalora_gc"], a, "peak_mib"),
            "memory peft_lora_gc/peft_lora": ratio(stats["peft_lora_gc"], stats["peft_lora"], "peak_mib"),
        }
    if final_rounds:
        fa, fl = summarize(adalora, final_rounds), summarize(lora, final_rounds)
        result["final_phase"] = {
            "adarank_adalora_after_shrink": fa,
            "adarank_lora": fl,
            "step_time_ratio": ratio(fa, fl, "median_ms"),
            "memory_ratio": ratio(fa, fl, "peak_mib"),
        }
    result["criteria"] = criteria(ctx, result)
    result["losses"] = {name: float(arm.loss_sum) / max(1, arm.step_no) for name, arm in arms.items()}
    del arms, template, adalora, lora
    return result


def criteria(ctx: Ctx, result: dict[str, Any]) -> dict[str, Any]:
    """issue 38's pass criteria for one model (not judged on the CPU dry run)."""
    step = result["ratios"]["step_time"]
    memory = result["ratios"]["peak_memory"]
    final = result.get("final_phase", {})
    checks = {
        "adarank_adalora/adarank_lora step time <= 1.05": (step["adarank_adalora/adarank_lora"], lambda v: v <= 1.05),
        "adarank_adalora/peft_adalora step time < 1": (step["adarank_adalora/peft_adalora"], lambda v: v < 1.0),
        "adarank_adalora/adarank_lora peak memory <= 1.05": (
            memory["adarank_adalora/adarank_lora"],
            lambda v: v <= 1.05,
        ),
        "final phase after shrink / adarank_lora step time <= 1.03": (
            final.get("step_time_ratio"),
            lambda v: v <= 1.03,
        ),
    }
    out: dict[str, Any] = {}
    for name, (value, test) in checks.items():
        if ctx.dry:
            out[name] = {"value": value, "pass": None, "note": "CPU dry run: not judged"}
        else:
            out[name] = {"value": value, "pass": None if value is None else bool(test(value))}
    return out


def step_time(ctx: Ctx, deadline: float) -> dict[str, Any]:
    import peft
    import transformers

    result: dict[str, Any] = {
        "timing": "CUDA events per step, no sync inside a round"
        if ctx.device.type == "cuda"
        else "CPU perf_counter per step (dry run)",
        "memory": "torch.cuda.max_memory_allocated per round, reset between "
        "rounds, less the other arms' adapters and optimizer state (the frozen base is one shared copy)"
        if ctx.device.type == "cuda"
        else "skipped: no CUDA memory statistics on CPU",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "targets": TARGETS,
        "ranks": f"AdaLoRA {INIT_RANK} -> the parameters of rank {TARGET_RANK}; LoRA {TARGET_RANK}",
        "models": {},
    }
    labels = list(ctx.sizes.models)
    for i, label in enumerate(labels):
        left = ctx.left(deadline)
        if left < (15 if not ctx.dry else 2):
            result["models"][label] = {"skipped": f"section budget ({left:.0f} s left)"}
            continue
        share = deadline if i == len(labels) - 1 else time.monotonic() + left * 0.3
        log(ctx, f"  step_time: {label}")
        try:
            result["models"][label] = step_time_model(ctx, label, ctx.sizes.models[label], i == len(labels) - 1, share)
        except Exception:
            result["models"][label] = {"error": traceback.format_exc()[-3000:]}
        free(ctx)
    crits = [m.get("criteria", {}) for m in result["models"].values()]
    if ctx.dry:
        result["ok"] = None  # CPU figures of stand-ins: nothing to judge
    else:
        result["ok"] = bool(crits) and all(c and all(v["pass"] for v in c.values()) for c in crits)
    return result


# ---------------------------------------------------------------- e. fsdp2_world1


def fsdp2_worker(args: argparse.Namespace) -> None:
    """One torchrun process: train_loop with strategy fsdp2 (NCCL on CUDA, gloo on CPU)."""
    from adarank import BudgetConfig, RankAllocator, inject_adapters
    from adarank.core.sharding import is_sharded
    from adarank.training.engine import LoopConfig, exit_distributed, init_distributed, train_loop

    sizes = DRY if args.dry_run else GPU
    rank, world, device = init_distributed()
    model = llama(sizes.resume_model, device)
    adapters = inject_adapters(model, TARGETS, rank=INIT_RANK, alpha=ALPHA, seed=0)
    allocator = RankAllocator(adapters, BudgetConfig(**RESUME_BUDGET, shrink=True))
    rows = token_rows(64, sizes.resume_seq, sizes.answer, sizes.resume_model["vocab_size"])
    seen: list[bool] = []
    stamps: list[float] = []

    def on_step(step: int, alloc: Any) -> None:
        seen.append(all(is_sharded(a.base.weight) for a in alloc.adapters.values()))
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    config = LoopConfig(
        steps=RESUME_STEPS, batch_size=sizes.resume_batch, learning_rate=LEARNING_RATE, strategy="fsdp2", log_steps=4
    )
    inner, result = train_loop(model, allocator, rows, collate, config, on_step=on_step)
    gaps = [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:], strict=False)]
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    (args.run_dir / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "world_size": world,
                "device": str(device),
                "backend": backend,
                "base_sharded_every_step": all(seen),
                "adapters_whole": not any(is_sharded(p) for p in inner.parameters() if p.requires_grad),
                "ranks_total": sum(allocator.ranks().values()),
                "masking_steps": [e["step"] for e in allocator.history],
                "train_loss": result.train_loss,
                "log": result.log_history,
                "median_step_ms": round(statistics.median(gaps), 2) if gaps else None,
                "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)
                if device.type == "cuda"
                else None,
            }
        )
    )
    exit_distributed(0)


def fsdp2_world1(ctx: Ctx, deadline: float) -> dict[str, Any]:
    folder = ctx.work / "fsdp2"
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        *worker_cmd(ctx, "fsdp2", folder)[1:],
    ]
    done = run(cmd, deadline)
    record = folder / "rank0.json"
    result: dict[str, Any] = {
        **done,
        "model": "SmolLM2-135M shape" if not ctx.dry else "tiny stand-in",
        "steps": RESUME_STEPS,
        "budget": RESUME_BUDGET,
    }
    result["worker"] = json.loads(record.read_text()) if record.is_file() else None
    w = result["worker"] or {}
    result["ok"] = done["rc"] == 0 and bool(w.get("base_sharded_every_step")) and bool(w.get("adapters_whole"))
    if result["ok"]:
        result.pop("output_tail")
    return result


QUANT_STEPS = 6


def quantized(ctx: Ctx, deadline: float) -> dict[str, Any]:
    """model.quantization on this device (issue 41): memory, a few training steps, the dequantized copy."""
    from adarank import BudgetConfig, RankAllocator, inject_adapters
    from adarank.io.quantize import backend_problem, dequantized_copy, quantize_base_
    from adarank.training.engine import LoopConfig, train_loop

    result: dict[str, Any] = {"model": "SmolLM2-135M shape" if not ctx.dry else "tiny stand-in", "arms": {}}
    problem = backend_problem("nf4")
    if problem:
        return {**result, "ok": False, "skipped": problem}
    sizes = ctx.sizes
    rows = token_rows(QUANT_STEPS * sizes.resume_batch, sizes.resume_seq, sizes.answer,
                      sizes.resume_model["vocab_size"])  # fmt: skip
    probe = to_device(collate(rows[: sizes.resume_batch]), ctx.device)
    for quantization in ("none", "nf4", "int8"):
        if ctx.left(deadline) < 3:
            result["arms"][quantization] = {"skipped": "section budget"}
            continue
        free(ctx)
        allocated = torch.cuda.memory_allocated() if ctx.device.type == "cuda" else 0
        model = llama(sizes.resume_model, ctx.device)
        if quantization != "none":
            quantize_base_(model, quantization)
        base_bytes = (torch.cuda.memory_allocated() - allocated) if ctx.device.type == "cuda" else None
        adapters = inject_adapters(model, TARGETS, rank=INIT_RANK, alpha=ALPHA, seed=0)
        allocator = RankAllocator(adapters, BudgetConfig(**{**RESUME_BUDGET, "t_init": 1, "t_final": 2}))
        config = LoopConfig(steps=QUANT_STEPS, batch_size=sizes.resume_batch, learning_rate=LEARNING_RATE, seed=0,
                            log_steps=1)  # fmt: skip
        began = time.monotonic()
        inner, run_result = train_loop(model, allocator, rows, collate, config)
        sync(ctx.device)
        seconds = time.monotonic() - began
        losses = [e["loss"] for e in run_result.log_history if "loss" in e]
        inner.eval()
        with torch.no_grad():
            logits = inner(**probe).logits.float()
            plain = dequantized_copy(inner, torch.bfloat16) if quantization != "none" else inner
            plain_logits = plain(**probe).logits.float()
        gap = (logits - plain_logits).abs().max().item()
        result["arms"][quantization] = {
            "base_MiB": None if base_bytes is None else round(base_bytes / 2**20, 1),
            "losses": [round(v, 4) for v in losses],
            "train_seconds": round(seconds, 2),
            "dequantized_copy_max_abs_logit_gap": gap,
            "logit_scale": logits.abs().max().item(),
        }
        del model, inner, plain, allocator, adapters
    arms = [a for a in result["arms"].values() if "losses" in a]
    finite = all(a["losses"] and all(v == v and abs(v) < 1e4 for v in a["losses"]) for a in arms)
    close = all(a["dequantized_copy_max_abs_logit_gap"] <= 1e-2 * max(1.0, a["logit_scale"]) for a in arms)
    memory = result["arms"].get("nf4", {}).get("base_MiB"), result["arms"].get("none", {}).get("base_MiB")
    smaller = None in memory or memory[0] < memory[1]
    result["criteria"] = {"losses_finite": finite, "dequantized_copy_close": close, "nf4_base_smaller": smaller}
    result["ok"] = len(arms) == 3 and finite and close and smaller
    return result


# ---------------------------------------------------------------- the runner


def free(ctx: Ctx) -> None:
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def environment(ctx: Ctx) -> dict[str, Any]:
    info: dict[str, Any] = {
        "dry_run": ctx.dry,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }
    for name in (
        "transformers",
        "huggingface_hub",
        "tokenizers",
        "safetensors",
        "accelerate",
        "peft",
        "omegaconf",
        "datasets",
        "matplotlib",
        "pytest",
    ):
        try:
            module = __import__(name)
            info[name] = f"{getattr(module, '__version__', '?')} ({Path(module.__file__ or '?').parent.parent})"
        except Exception as err:  # noqa: BLE001 - absent or broken: say which
            info[name] = f"not importable: {type(err).__name__}: {str(err)[:160]}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "device": props.name,
            "device_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.version(),
        }
    return info


def write(ctx: Ctx, name: str, payload: dict[str, Any]) -> Path:
    path = ctx.out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="folder for the JSON files")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, few steps; CUDA-only parts skipped")
    parser.add_argument("--budget", type=float, help="seconds for the whole check (default 280; dry run 195)")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="run these sections alone")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (checkpoints, model folders)")
    parser.add_argument("--worker", choices=("resume", "fsdp2"), help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stop-at", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "resume":
        resume_worker(args)
        return 0
    if args.worker == "fsdp2":
        fsdp2_worker(args)
        return 0
    if args.out is None:
        parser.error("--out is required")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run for the CPU check")
    sizes = DRY if args.dry_run else GPU
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(
        args.out,
        args.dry_run,
        sizes,
        torch.device("cpu" if args.dry_run else "cuda"),
        Path(tempfile.mkdtemp(prefix="gpu_check_")),
    )
    ctx.deadline = ctx.start + (args.budget or sizes.total)
    functions: dict[str, Callable[[Ctx, float], dict[str, Any]]] = {
        "cuda_tests": cuda_tests,
        "train_resume": train_resume,
        "sync_debug": sync_debug,
        "step_time": step_time,
        "fsdp2_world1": fsdp2_world1,
        "quantized": quantized,
    }
    chosen = [s for s in SECTIONS if not args.only or s in args.only]
    current = {"name": "environment"}

    def on_term(signum: int, _: Any) -> None:  # timeout's SIGTERM: say where the check was
        for proc in list(CHILDREN):
            kill_group(proc)
        write(ctx, f"{current['name']}.error", {"error": f"terminated by signal {signum} at {ctx.elapsed():.0f} s"})
        sys.stdout.flush()
        os._exit(124)

    signal.signal(signal.SIGTERM, on_term)
    env = environment(ctx)
    write(ctx, "environment", env)
    log(
        ctx,
        f"gpu_check {'DRY RUN on CPU' if ctx.dry else 'on ' + str(env.get('device'))}: "
        f"{', '.join(chosen)}; budget {ctx.deadline - ctx.start:.0f} s; out {ctx.out}",
    )
    summary: dict[str, Any] = {"dry_run": ctx.dry, "device": env.get("device", "cpu"), "sections": {}}
    saved = 0.0
    for i, name in enumerate(chosen):
        later = sum(MIN_SECONDS for _ in chosen[i + 1 :])
        left = ctx.deadline - time.monotonic()
        section_deadline = min(ctx.deadline - later, time.monotonic() + sizes.budgets[name] + saved)
        if section_deadline - time.monotonic() < MIN_SECONDS:
            write(ctx, name, {"skipped": f"out of time ({left:.0f} s left for the check)"})
            summary["sections"][name] = {"status": "skipped: out of time"}
            log(ctx, f"{name}: skipped, out of time")
            continue
        current["name"] = name
        began = time.monotonic()
        log(ctx, f"{name}: start (until +{section_deadline - ctx.start:.0f} s)")
        try:
            result = functions[name](ctx, section_deadline)
            result["seconds"] = round(time.monotonic() - began, 1)
            write(ctx, name, result)
            status = "ok" if result.get("ok") else "dry run" if result.get("ok") is None else "not ok"
            summary["sections"][name] = {"status": status, "seconds": result["seconds"]}
            log(ctx, f"{name}: {status} in {result['seconds']:.1f} s -> {ctx.out / (name + '.json')}")
        except Exception as err:  # noqa: BLE001 - record it and go on with the next section
            write(ctx, f"{name}.error", {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
            summary["sections"][name] = {"status": f"error: {type(err).__name__}: {str(err)[:200]}"}
            log(ctx, f"{name}: FAILED ({type(err).__name__}: {str(err)[:200]}) -> {name}.error.json")
        free(ctx)
        saved = max(0.0, section_deadline - time.monotonic())
    current["name"] = "summary"
    summary["seconds"] = round(ctx.elapsed(), 1)
    headline(ctx, summary)
    write(ctx, "summary", summary)
    if not args.keep:
        shutil.rmtree(ctx.work, ignore_errors=True)
    log(ctx, f"done: {json.dumps(summary['sections'])}")
    return 0


def headline(ctx: Ctx, summary: dict[str, Any]) -> None:
    """The figures the report quotes, gathered from the section files."""
    path = ctx.out / "step_time.json"
    if path.is_file():
        data = json.loads(path.read_text())
        summary["step_time"] = {
            label: {k: m.get(k) for k in ("ratios", "final_phase", "allocator_ms_median", "criteria")}
            | {
                "median_ms": {a: s.get("median_ms") for a, s in m.get("decay", {}).items()},
                "peak_mib": {a: s.get("peak_mib") for a, s in m.get("decay", {}).items()},
            }
            for label, m in data.get("models", {}).items()
            if "decay" in m
        }
    path = ctx.out / "sync_debug.json"
    if path.is_file():
        data = json.loads(path.read_text())
        summary["sync_debug"] = {
            k: {x: r.get(x) for x in ("total", "by_step_kind", "steady_from_adarank")}
            for k, r in data.get("runs", {}).items()
        }
    path = ctx.out / "train_resume.json"
    if path.is_file():
        data = json.loads(path.read_text())
        summary["train_resume"] = {k: data.get(k, {}).get("bitwise_equal") for k in (f"{n}_vs_full" for n in KILLS)}


if __name__ == "__main__":
    sys.exit(main())
