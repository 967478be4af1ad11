"""FSDP2 (issue 19), on CPU with gloo under torchrun: the adapters really are sharded DTensors while
training; 2 sharded processes allocate exactly like 1 process on the same global batches and like 2 DDP
processes; a run killed mid-decay resumes to the uninterrupted result; `adarank train
distributed.strategy=fsdp2` writes the run directory once, with an export that loads."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import save_tiny_model
from test_distributed import ROOT, RUN_FILES, _torchrun

from adarank.checks import load_config
from adarank.config import ConfigError

WORKER = Path(__file__).parent / "fsdp_worker.py"
FINAL_TOLERANCE = 1e-4
"""Max abs difference allowed between the final adapters of 2 sharded processes and 1 process (fp32;
the reductions are summed in another order). Measured: 4e-6."""


def _record(folder: Path, rank: int = 0) -> dict:
    return json.loads((folder / f"rank{rank}.json").read_text())


def _masks(run: dict) -> list:
    return [(e["step"], e["kept"], e["rank_mask"]) for e in run["events"]]


def _final(folder: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(folder / f"final{rank}.pt", map_location="cpu")


@pytest.mark.slow
def test_task_only_scores_in_the_loop_sharded_and_not(tmp_path) -> None:
    """importance.task_only in adarank's loop: at step 1 (lambda = 0) P's and Q's gradient is the
    orthogonality penalty's alone, so their task-only sensitivity is 0 on every shard, where the paper's
    is not; and two sharded processes still allocate like one."""
    _torchrun(2, str(WORKER), "fsdp2", str(tmp_path / "fsdp2"), "8", "--task-only")
    _torchrun(1, str(WORKER), "none", str(tmp_path / "single"), "16", "--task-only")
    _torchrun(1, str(WORKER), "none", str(tmp_path / "paper"), "16")
    rank0, rank1, single = _record(tmp_path / "fsdp2", 0), _record(tmp_path / "fsdp2", 1), _record(tmp_path / "single")
    paper = _record(tmp_path / "paper")["first_pq_sensitivity"]
    assert paper > 1e-9
    assert max(r["first_pq_sensitivity"] for r in (rank0, rank1, single)) <= 1e-5 * paper
    assert _masks(rank0) == _masks(single) and rank0["final_ranks"] == single["final_ranks"]
    # where clipping bites (norm 1e-4): the penalty's share is scaled by the same coefficient before it is
    # taken out (unscaled, (coefficient - 1) x the penalty's gradient would be left in the scores)
    _torchrun(1, str(WORKER), "none", str(tmp_path / "clipped"), "16", "--task-only", "--max-grad-norm", "1e-4")
    _torchrun(1, str(WORKER), "none", str(tmp_path / "paper-clipped"), "16", "--max-grad-norm", "1e-4")
    clipped = _record(tmp_path / "paper-clipped")["first_pq_sensitivity"]
    assert 1e-12 < clipped < 1e-2 * paper  # clipping scaled the gradients down
    assert _record(tmp_path / "clipped")["first_pq_sensitivity"] <= 1e-5 * clipped


@pytest.mark.slow
def test_two_sharded_processes_allocate_like_one_process_and_like_ddp(tmp_path) -> None:
    _torchrun(2, str(WORKER), "fsdp2", str(tmp_path / "fsdp2"), "8")
    _torchrun(1, str(WORKER), "none", str(tmp_path / "single"), "16")  # the same global batch of 16
    _torchrun(2, str(WORKER), "ddp", str(tmp_path / "ddp"), "8")
    rank0, rank1 = _record(tmp_path / "fsdp2", 0), _record(tmp_path / "fsdp2", 1)
    single, ddp = _record(tmp_path / "single"), _record(tmp_path / "ddp")
    # FSDP was on: every adapted base weight was a DTensor at every step, while the adapters' own
    # parameters stayed whole on both processes (the engine averages their gradients itself)
    assert len(rank0["sharded"]) == 24 and all(rank0["sharded"]) and all(rank1["sharded"])
    assert all(rank0["whole"]) and all(rank1["whole"]) and all(single["whole"])
    assert not any(single["sharded"]) and not any(ddp["sharded"])
    assert set(rank0["events"][0]["local_lambda"]) == set(rank1["events"][0]["local_lambda"]) == {5}
    steps = [e["step"] for e in single["events"]]
    assert steps == [10, 12, 14, 16, 18] and [e["step"] for e in rank0["events"]] == steps
    for event0, event1 in zip(rank0["events"], rank1["events"], strict=True):  # one set of scores and masks
        assert (event0["scores"], event0["kept"], event0["rank_mask"]) == (
            event1["scores"],
            event1["kept"],
            event1["rank_mask"],
        )
    assert _masks(rank0) == _masks(single), "sharded masks equal the one-process masks at every masking step"
    assert _masks(ddp) == _masks(rank0), "and equal DDP's on the same data"
    for two, one in zip(rank0["events"], single["events"], strict=True):
        for name, scores in one["scores"].items():
            assert two["scores"][name] == pytest.approx(scores, rel=1e-4)
    assert rank0["final_ranks"] == single["final_ranks"]
    assert len(set(single["final_ranks"].values())) > 1, "allocation must have moved rank between modules"
    sharded, whole = _final(tmp_path / "fsdp2"), _final(tmp_path / "single")
    assert sorted(sharded) == sorted(whole) and any("classifier" in n for n in whole)
    worst = max(float((sharded[n] - whole[n]).abs().max()) for n in whole)
    assert worst <= FINAL_TOLERANCE, f"final adapters differ by {worst}"
    for name, tensor in _final(tmp_path / "fsdp2", 1).items():
        assert torch.equal(tensor, sharded[name]), "both processes gather the same final adapter"


@pytest.mark.slow
def test_sharded_run_killed_mid_decay_resumes_to_the_uninterrupted_result(tmp_path) -> None:
    _torchrun(2, str(WORKER), "fsdp2", str(tmp_path / "whole"), "8")
    out = tmp_path / "stopped"
    with pytest.raises(AssertionError):  # the worker kills itself right after step 15
        _torchrun(2, str(WORKER), "fsdp2", str(out), "8", "--save-steps", "6", "--stop-at", "15")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-6"]
    assert not (out / "rank0.json").exists()
    _torchrun(2, str(WORKER), "fsdp2", str(out), "8", "--save-steps", "6", "--resume")
    whole, resumed = _record(tmp_path / "whole"), _record(out)
    assert [e["step"] for e in resumed["events"]] == [14, 16, 18]  # masking steps after the checkpoint at 12
    for key in ("history", "trace", "log", "train_loss", "final_ranks"):
        assert resumed[key] == whole[key], key
    for name, tensor in _final(tmp_path / "whole").items():
        assert torch.equal(_final(out)[name], tensor), name


@pytest.mark.slow
def test_train_cli_with_fsdp2_writes_the_run_once_with_an_export_that_loads(tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    from adarank import load_adapter

    model = tmp_path / "model"
    save_tiny_model(model, llama=False)
    out = tmp_path / "run"
    done = _torchrun(
        2, "-m", "adarank", "train", f"output_dir={out}", f"model.name_or_path={model}", "train.max_steps=8",
        "train.batch_size=8", "data.max_train_samples=128", "data.max_eval_samples=32", "budget.init_rank=3",
        "budget.target_rank=2", "budget.t_init=2", "budget.t_final=2", "budget.mask_interval=2",
        "wandb.mode=disabled", "distributed.strategy=fsdp2", cwd=ROOT,
    )  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 8
    assert metrics["total_rank_final"] == metrics["target_total_rank"] == 16
    assert done.stdout.count("run directory:") == 1, "only process 0 reports and writes"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == RUN_FILES
    trace = json.loads((out / "rank_trace.json").read_text())
    assert [p["step"] for p in trace] == list(range(9)) and trace[-1]["live_rank"] == 16
    ranks = json.loads((out / "allocation.json").read_text())
    fresh = AutoModelForSequenceClassification.from_pretrained(model)
    loaded = load_adapter(fresh, out / "adapter")
    assert {n: a.live_rank() for n, a in loaded.items()} == {n: r for n, r in ranks.items() if r}
    assert all(a.singular_values.abs().min() > 0 for a in loaded.values()), "trained, gathered lambdas"


@pytest.mark.slow
@pytest.mark.parametrize(("task", "init"), [("classification", "orthonormal"), ("generation", "orthonormal"),
                                             ("classification", "gradient")])  # fmt: skip
def test_loading_by_rows_or_from_process_0_two_processes_train_like_one(tmp_path, task, init) -> None:
    """A Llama with tied embeddings (as SmolLM2): as a classifier its `score` head is new (drawn on every
    process as from_pretrained draws it), as an LM its lm_head is tied and its rotary frequencies are a
    non-persistent buffer. Every process builds the model on the meta device and reads its own shards from
    the checkpoint; with the gradient warm start process 0 loads the model and sends the others theirs. A
    wrong or missing tensor would change the untrained floor or the trained adapters against the
    one-process run on the same global batches."""
    from safetensors.torch import load_file

    model = tmp_path / "model"
    save_tiny_model(model, llama=True, tie_word_embeddings=True)
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"run{nproc}"
        done = _torchrun(
            nproc, "-m", "adarank", "train", f"output_dir={out}", f"model.name_or_path={model}",
            f"data.format={task}", "train.max_steps=8", f"train.batch_size={16 // nproc}",
            "data.max_train_samples=128", "data.max_eval_samples=32", "budget.init_rank=3", "budget.target_rank=2",
            "budget.t_init=2", "budget.t_final=2", "budget.mask_interval=2", "wandb.mode=disabled",
            "distributed.strategy=fsdp2", "adapter.target_modules=[q_proj,v_proj]", f"adapter.init={init}", cwd=ROOT,
        )  # fmt: skip
        assert done.stdout.count("run directory:") == 1
        route = "process 0 loads the weights" if init == "gradient" else "every process reads only its own shards"
        assert done.stdout.count(route) == 1, done.stdout
        metrics = json.loads((out / "metrics.json").read_text())
        runs[nproc] = (metrics, load_file(out / "adapter" / "adapter.safetensors"))
    (one, one_tensors), (two, two_tensors) = runs[1], runs[2]
    if task == "generation":
        assert two["test_answer_loss_before"] == pytest.approx(one["test_answer_loss_before"], rel=1e-6)
        assert two["test_answer_loss"] == pytest.approx(one["test_answer_loss"], rel=1e-4)
    else:
        assert any(".score." in name for name in one_tensors), "the new head is exported"
    assert sorted(two_tensors) == sorted(one_tensors)
    for name, tensor in one_tensors.items():
        assert torch.allclose(two_tensors[name], tensor, atol=FINAL_TOLERANCE), name


@pytest.mark.slow
def test_fsdp2_run_logs_allocation_training_and_validation_to_one_wandb_run(tmp_path) -> None:
    """wandb offline (the default without a login) under torchrun: process 0 logs the masking steps, the
    loop's loss entries and the validation curve (train.eval_steps) into one run in the run directory."""
    from wandb_offline import history, run_file, run_name, summary

    model = tmp_path / "model"
    save_tiny_model(model, llama=False)
    out = tmp_path / "run"
    env = {"WANDB_API_KEY": "", "HOME": str(tmp_path), "WANDB_MODE": ""}
    env |= {var: str(tmp_path / "wandb-home") for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR")}
    _torchrun(
        2, "-m", "adarank", "train", f"output_dir={out}", f"model.name_or_path={model}", "train.max_steps=8",
        "train.batch_size=8", "data.max_train_samples=128", "data.max_eval_samples=32", "budget.init_rank=3",
        "budget.target_rank=2", "budget.t_init=2", "budget.t_final=2", "budget.mask_interval=2",
        "train.eval_steps=4", "distributed.strategy=fsdp2", cwd=ROOT, env=env,
    )  # fmt: skip
    rows = history(run_file(out))  # exactly one run, under the run directory
    assert run_name(run_file(out)) == out.name == "run"  # named after it, as the Trainer path's run
    events = json.loads((out / "allocation_history.json").read_text())
    logged = {row["train/global_step"]: row for row in rows if "adarank/live_rank" in row}
    assert sorted(logged) == sorted(int(step) for step in events) == [4, 6]
    for step, row in logged.items():
        ranks = {k.removeprefix("rank/"): v for k, v in row.items() if k.startswith("rank/")}
        assert ranks == events[str(step)]["ranks"]
        assert row["adarank/live_rank"] == sum(ranks.values()) == events[str(step)]["live"]
        assert row["adarank/orth_penalty"] >= 0.0
        assert sum(row["adarank/triplet_scores"]["values"]) == 8 * 3  # every triplet of the 8 adapters
    log = json.loads((out / "train_log.json").read_text())
    evals = [e for e in log if "eval_loss" in e]
    assert [e["step"] for e in evals] == [4, 8], "the validation curve is in the run's log (the report draws it)"
    assert all(0 <= e["eval_accuracy"] <= 1 and e["eval_loss"] > 0 for e in evals)
    logged_evals = {row["train/global_step"]: row for row in rows if "eval/loss" in row}
    assert {s: (r["eval/loss"], r["eval/accuracy"]) for s, r in logged_evals.items()} == {
        e["step"]: (e["eval_loss"], e["eval_accuracy"]) for e in evals
    }
    train = {row["train/global_step"]: row["train/loss"] for row in rows if "train/loss" in row}
    assert train == {e["step"]: e["loss"] for e in log if "loss" in e}
    assert any("report/rank_heatmap" in row for row in rows), "the report's figures go to the same run"
    info = summary(run_file(out))
    assert json.loads(info["adarank/final_ranks"]) == json.loads((out / "allocation.json").read_text())
    assert info["final/test_accuracy"] == json.loads((out / "metrics.json").read_text())["test_accuracy"]


def test_fsdp2_without_torchrun_or_with_an_unknown_strategy_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError) as refused:
        load_config(None, ["distributed.strategy=fsdp2", "train.eval_steps=5", f"output_dir={tmp_path}"])
    assert len(refused.value.problems) == 1, "train.eval_steps runs in the FSDP2 loop"
    assert "torchrun --nproc_per_node N -m adarank train" in refused.value.problems[0]
    with pytest.raises(ConfigError, match="distributed.strategy `zero3` is not one of ddp, fsdp2"):
        load_config(None, ["distributed.strategy=zero3", f"output_dir={tmp_path}"])
    assert not any(tmp_path.iterdir()), "validation writes nothing"


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
def test_fsdp2_loop_on_cuda_with_nccl_allocates_like_the_cpu_run(tmp_path) -> None:
    _torchrun(1, str(WORKER), "fsdp2", str(tmp_path / "cuda"), "16")
    _torchrun(1, str(WORKER), "none", str(tmp_path / "cpu"), "16", env={"CUDA_VISIBLE_DEVICES": ""})
    cuda, cpu = _record(tmp_path / "cuda"), _record(tmp_path / "cpu")
    assert all(cuda["sharded"]) and _masks(cuda) == _masks(cpu)
    worst = max(float((_final(tmp_path / "cuda")[n] - t).abs().max()) for n, t in _final(tmp_path / "cpu").items())
    assert worst <= FINAL_TOLERANCE


@pytest.mark.gpu
@needs_cuda
def test_trainer_with_accelerate_fsdp2_on_gpu_allocates_on_sharded_parameters(tmp_path) -> None:
    nproc = max(1, min(2, torch.cuda.device_count()))
    _torchrun(nproc, str(WORKER), "trainer-fsdp2", str(tmp_path / "trainer"), str(16 // nproc))
    run = _record(tmp_path / "trainer")
    assert len(run["sharded"]) == 24 and all(run["sharded"]), "FSDP2 must be on: DTensor parameters"
    assert [e["step"] for e in run["events"]] == [10, 12, 14, 16, 18]
    assert sum(run["final_ranks"].values()) == 16 and run["trace"][-1]["live_rank"] == 16


@pytest.mark.slow
def test_a_model_process_0_cannot_load_is_refused_on_every_process(tmp_path) -> None:
    """Process 0 alone loads the weights; its ConfigError reaches the others (they wait for it), so
    every process stops with the same message and nothing hangs or is written."""
    import shutil
    import subprocess

    model = tmp_path / "model"
    save_tiny_model(model, llama=False)
    for weights in model.glob("*.safetensors"):
        weights.unlink()  # config and tokenizer readable, weights gone: only loading finds out
    out = tmp_path / "run"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "adarank", "train", f"output_dir={out}",
         f"model.name_or_path={model}", "train.max_steps=2", "distributed.strategy=fsdp2", "wandb.mode=disabled"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode != 0
    assert (done.stdout + done.stderr).count(f"cannot load `{model}`") == 2, "both processes say why"
    assert not out.exists() or not any(out.iterdir())


def _load_where_process_0_breaks(rank: int, store: str, results: Any) -> None:
    """One of two processes: load_model_sharded by process 0 while its read fails with an OSError."""
    from datetime import timedelta

    import torch.distributed as dist

    import adarank.io.sharded as sharded
    from adarank.config import ModelConfig

    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )

    def broken_disk(*args: object, **kwargs: object) -> None:
        raise OSError("read error on model.safetensors")

    sharded.load_model = broken_disk  # type: ignore[assignment]
    try:  # the process-0 route (as for the gradient warm start)
        sharded.load_model_sharded(ModelConfig(), False, 2, by_rows=False)
        results.put((rank, "loaded"))
    except Exception as err:
        results.put((rank, f"{type(err).__name__}: {err}"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_any_load_failure_on_process_0_stops_the_others_with_its_message(tmp_path) -> None:
    """Not only a ConfigError: whatever process 0 meets while loading (a read error here) reaches the
    other processes at once, instead of leaving them in the broadcast until a timeout."""
    import multiprocessing
    import time

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_load_where_process_0_breaks, args=(r, str(tmp_path / "store"), results))
               for r in range(2)]  # fmt: skip
    start = time.monotonic()
    for worker in workers:
        worker.start()
    found = dict(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    assert found == {
        0: "OSError: read error on model.safetensors",
        1: "RuntimeError: process 0 failed to load the model: OSError: read error on model.safetensors",
    }
    assert time.monotonic() - start < 50, "process 1 waited for the broadcast's timeout"
