"""One engine behind `adarank train` for every strategy (issue 35): the same short run in one process,
under torchrun DDP x2 and FSDP2 x2 (CPU, gloo), with the shrink, the warm start, evaluation during
training and an offline wandb run, allocates the same masks at every masking step and ends with the
same adapters; a run killed with SIGKILL and resumed ends bitwise where the uninterrupted run does,
in every strategy; and a run directory whose checkpoints adarank 0.1 wrote is refused before
anything is written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model
from safetensors.torch import load_file
from test_distributed import ROOT

from adarank.checks import load_config
from adarank.config import ConfigError
from adarank.training.checkpoint import ALLOCATOR_STATE

FINAL_TOLERANCE = 1e-4
"""Max abs difference allowed between final adapters of different strategies (fp32; the gradients of
two processes are summed in another order than one process's)."""
STRATEGIES = {"none": 1, "ddp": 2, "fsdp2": 2}
GLOBAL_BATCH = 16


def _launcher(strategy: str) -> list[str]:
    """`python -m adarank train` for one process; under torchrun for two."""
    nproc = STRATEGIES[strategy]
    if nproc == 1:
        return [sys.executable, "-m", "adarank", "train"]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    return [torchrun, "--standalone", f"--nproc_per_node={nproc}", "-m", "adarank", "train"]


def _command(strategy: str, out: Path, model: Path) -> list[str]:
    nproc = STRATEGIES[strategy]
    settings = [
        f"output_dir={out}", f"model.name_or_path={model}", "adapter.target_modules=[query,value,intermediate.dense]",
        "train.max_steps=24", f"train.batch_size={GLOBAL_BATCH // nproc}", "data.max_train_samples=256",
        "data.max_eval_samples=32", "budget.init_rank=3", "budget.target_rank=1", "budget.t_init=4",
        "budget.t_final=6", "budget.mask_interval=2", "budget.shrink=true", "adapter.init=gradient",
        "adapter.init_batches=2", "train.eval_steps=8", "train.save_steps=4", "wandb.mode=offline",
        f"distributed.strategy={'fsdp2' if strategy == 'fsdp2' else 'ddp'}",
    ]  # fmt: skip
    return [*_launcher(strategy), *settings]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_API_KEY": "", "WANDB_MODE": ""}
    homes = ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR")
    return env | {var: str(tmp_path / "wandb-home") for var in homes}


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _kill_after_checkpoint(command: list[str], env: dict[str, str], marker: Path) -> None:
    """Start ``command`` and SIGKILL it and every process under it (torchrun's workers start sessions of
    their own) once ``marker`` exists."""
    import psutil

    victim = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while not marker.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished (or failed) before it could be killed"
    tree = [*psutil.Process(victim.pid).children(recursive=True), psutil.Process(victim.pid)]
    for process in tree:
        process.send_signal(signal.SIGKILL)
    victim.wait()
    psutil.wait_procs(tree, timeout=30)


def _json(run: Path, name: str) -> object:
    return json.loads((run / name).read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per strategy: an uninterrupted run, and one killed after checkpoint-12 then resumed."""
    root = tmp_path_factory.mktemp("engine")
    model = root / "model"
    # no dropout: one process draws its masks for 16 rows, two processes for 8 each, from the same seed
    save_tiny_model(model, llama=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    env = _env(root)
    out: dict[str, Path] = {}
    for strategy in STRATEGIES:
        whole, killed = root / f"{strategy}-whole", root / f"{strategy}-killed"
        _run(_command(strategy, whole, model), env)
        marker = killed / "trainer" / "checkpoint-12" / ALLOCATOR_STATE
        _kill_after_checkpoint(_command(strategy, killed, model), env, marker)
        assert not (killed / "metrics.json").exists()
        _run([*_launcher(strategy), f"resume={killed}"], env)  # its config.yaml, its directory
        out[strategy], out[f"{strategy}-killed"] = whole, killed
    return out


@pytest.mark.slow
def test_every_strategy_allocates_the_same_masks_and_adapters(runs: dict[str, Path]) -> None:
    one = runs["none"]
    history = _json(one, "allocation_history.json")
    # the decay's masking steps (every 2 from t_init = 4), then the final one at T - t_final = 18
    assert sorted(int(s) for s in history) == [6, 8, 10, 12, 14, 16, 18]
    assert history["18"]["final"] and len(set(history["18"]["ranks"].values())) > 1, "rank moved between modules"
    reference = load_file(str(one / "adapter" / "adapter.safetensors"))
    for strategy in ("ddp", "fsdp2"):
        run = runs[strategy]
        assert _json(run, "metrics.json")["world_size"] == 2
        other = _json(run, "allocation_history.json")
        assert {s: e["ranks"] for s, e in other.items()} == {s: e["ranks"] for s, e in history.items()}, strategy
        assert _json(run, "allocation.json") == _json(one, "allocation.json")
        assert [p["live_rank"] for p in _json(run, "rank_trace.json")] == [
            p["live_rank"] for p in _json(one, "rank_trace.json")
        ]
        tensors = load_file(str(run / "adapter" / "adapter.safetensors"))
        assert sorted(tensors) == sorted(reference)
        worst = max(float((tensors[n] - reference[n]).abs().max()) for n in reference)
        assert worst <= FINAL_TOLERANCE, f"{strategy}: final adapters differ by {worst}"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _node_command(node: int, port: int) -> list[str]:
    """docs/distributed.md's several-machines command, as node ``node`` of 2 with one process each (both nodes on
    this machine: the rendezvous on 127.0.0.1, the run directory shared)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    return [torchrun, "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1", "--rdzv_backend",
            "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "adarank-two-nodes", "-m", "adarank",
            "train"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_nodes_of_one_process_allocate_as_one_node_of_two(runs: dict[str, Path], strategy: str, tmp_path) -> None:
    """Two simulated nodes (two torchrun launches on this machine, c10d rendezvous) give the masks and the
    adapters of one node with two processes."""
    out, model = tmp_path / "two-nodes", runs["none"].parent / "model"
    settings = _command(strategy, out, model)[len(_launcher(strategy)) :]
    port, env = _free_port(), _env(tmp_path)
    nodes = [subprocess.Popen([*_node_command(node, port), *settings], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for node in (0, 1)]  # fmt: skip
    for node in nodes:
        output, _ = node.communicate(timeout=600)
        assert node.returncode == 0, output[-3000:]
    one_node = runs[strategy]
    assert _json(out, "metrics.json")["world_size"] == 2
    history, reference = _json(out, "allocation_history.json"), _json(one_node, "allocation_history.json")
    assert {s: e["ranks"] for s, e in history.items()} == {s: e["ranks"] for s, e in reference.items()}
    assert _json(out, "allocation.json") == _json(one_node, "allocation.json")
    a, b = (
        load_file(str(out / "adapter" / "adapter.safetensors")),
        load_file(str(one_node / "adapter" / "adapter.safetensors")),
    )
    assert a.keys() == b.keys()
    worst = max(float((a[n] - b[n]).abs().max()) for n in a)
    assert worst <= FINAL_TOLERANCE, f"two nodes differ from one by {worst}"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_each_strategy_shrinks_warm_starts_evaluates_and_logs_rank_panels(runs: dict[str, Path], strategy) -> None:
    from wandb_offline import history, run_file

    run = runs[strategy]
    metrics = _json(run, "metrics.json")
    # shrink: the model holds the live triplets only (budget: rank 1 x 6 adapters)
    assert metrics["total_rank_final"] == metrics["target_total_rank"] == 6
    assert metrics["trainable_params_final"] == metrics["adapter_params_final"]  # the head came with the model
    assert metrics["adapter_params_final"] == sum(
        r * (32 + 32 + 1) if "query" in n or "value" in n else r * (64 + 32 + 1)
        for n, r in _json(run, "allocation.json").items()
    )
    log = _json(run, "train_log.json")
    assert [e["step"] for e in log if "eval_loss" in e] == [8, 16, 24]
    for key in ("loss", "learning_rate", "grad_norm", "orth_penalty", "live_rank", "rank_budget"):
        assert all(key in e for e in log if "loss" in e and "eval_loss" not in e), key
    rows = history(run_file(run))
    panels = {row["train/global_step"] for row in rows if any(k.startswith("rank/") for k in row)}
    assert panels == {6, 8, 10, 12, 14, 16, 18}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_sigkill_then_resume_is_bitwise_the_uninterrupted_run(runs: dict[str, Path], strategy) -> None:
    whole, resumed = runs[strategy], runs[f"{strategy}-killed"]
    for name in ("allocation.json", "allocation_history.json", "rank_trace.json", "train_log.json"):
        assert _json(resumed, name) == _json(whole, name), name
    a = load_file(str(whole / "adapter" / "adapter.safetensors"))
    b = load_file(str(resumed / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kept = sorted(p.name for p in (resumed / "trainer").iterdir())
    assert kept == ["checkpoint-20", "checkpoint-24"], "the two newest complete checkpoints are kept"


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v0_1" / "run"


def test_a_run_checkpointed_by_adarank_0_1_is_refused_before_anything_is_written(tmp_path) -> None:
    run = tmp_path / "old"
    shutil.copytree(FIXTURE, run)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    with pytest.raises(ConfigError) as refused:
        load_config(None, [f"resume={run}", f"output_dir={run}", "overwrite=true"])
    [problem] = refused.value.problems
    assert "written by adarank 0.1.0" in problem and "resume it with adarank 0.1.0" in problem
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
