"""Two processes (torchrun, gloo, CPU): identical masks on every rank after every allocation step, equal
to a one-process run at the same global batch; only process 0 writes the run directory; a launch
whose processes would each train alone is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_tiny_model

from adarank.training.trainer import check_launch

WORKER = Path(__file__).parent / "ddp_worker.py"
RUN_FILES = [
    "allocation.json", "allocation_history.json", "budget_curve.png", "budget_plan.png", "config.yaml",
    "loss_curve.png", "metrics.json", "rank_heatmap.png", "rank_over_time.png", "rank_trace.json", "report.html",
    "score_distribution.png", "train_log.json",
]  # fmt: skip
"""The files of a finished run directory (the adapter/ folder aside), written by process 0 alone."""
ROOT = Path(__file__).resolve().parents[2]


def _torchrun(
    nproc: int, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **(env or {})}
    done = subprocess.run(
        [torchrun, "--standalone", f"--nproc_per_node={nproc}", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_processes_hold_identical_masks_equal_to_one_process(tmp_path) -> None:
    model = tmp_path / "model"
    save_tiny_model(model, llama=False)
    _torchrun(2, str(WORKER), str(model), str(tmp_path / "ddp"), "8")
    _torchrun(1, str(WORKER), str(model), str(tmp_path / "single"), "16")
    _torchrun(1, str(WORKER), str(model), str(tmp_path / "control"), "8")  # another global batch
    rank0, rank1 = (json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1))
    single, control = (json.loads((tmp_path / run / "rank0.json").read_text()) for run in ("single", "control"))
    assert rank0["world_size"] == rank1["world_size"] == 2 and single["world_size"] == 1
    # disjoint shards whose union is, step by step, the one-process run's global batch
    assert len(rank0["seen"]) == len(rank1["seen"]) == len(single["seen"]) == 24
    for a, b, whole in zip(rank0["seen"], rank1["seen"], single["seen"], strict=True):
        assert not set(a) & set(b) and sorted(a + b) == sorted(whole)
    steps = [e["step"] for e in single["events"]]
    assert steps == [10, 12, 14, 16, 18] and [e["step"] for e in rank0["events"]] == steps
    assert rank0["events"] == rank1["events"], "every process must hold the same scores and masks"
    assert rank0["adapter_sha256"] == rank1["adapter_sha256"], "identical final adapters on every process"

    def masks(run: dict) -> list:
        return [(e["step"], e["kept"], e["rank_mask"]) for e in run["events"]]

    assert masks(rank0) == masks(single)
    for two, one in zip(rank0["events"], single["events"], strict=True):  # same scores up to fp rounding
        for name, scores in one["scores"].items():
            assert two["scores"][name] == pytest.approx(scores, rel=1e-4)
    assert rank0["final_ranks"] == single["final_ranks"]
    # budget.shrink (on by default) cut the adapters at step 18 in every process; under DDP the wrapper
    # was rebuilt around the shrunk model, and the processes still ended with identical adapters
    assert rank0["shrunk_at"] == rank1["shrunk_at"] == single["shrunk_at"] == 18
    assert rank0["ddp_rebuilt"] and rank1["ddp_rebuilt"]
    live = sum(r * (32 + 32 + 1) for r in single["final_ranks"].values())
    assert rank0["trainable_after"] == single["trainable_after"] == live + 32 * 2 + 2  # live triplets + head
    assert len(set(single["final_ranks"].values())) > 1, "allocation must have moved rank between modules"
    # the masks depend on the data: a one-process run on other global batches allocates differently,
    # so the agreement above is the gradients' agreement, not a coincidence of seeds
    assert masks(control) != masks(single)


@pytest.mark.slow
def test_adarank_train_under_torchrun_writes_once(tmp_path) -> None:
    model = tmp_path / "model"
    save_tiny_model(model, llama=False)
    out = tmp_path / "run"
    done = _torchrun(
        2,
        "-m",
        "adarank",
        "train",
        f"output_dir={out}",
        f"model.name_or_path={model}",
        "train.max_steps=8",
        "train.batch_size=8",
        "data.max_train_samples=128",
        "data.max_eval_samples=32",
        "budget.init_rank=3",
        "budget.target_rank=2",
        "budget.t_init=2",
        "budget.t_final=2",
        "budget.mask_interval=2",
        "wandb.mode=disabled",
        cwd=ROOT,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 8
    assert metrics["total_rank_final"] == metrics["target_total_rank"] == 16  # rank 2 x 8 adapters
    assert done.stdout.count("run directory:") == 1, "only process 0 reports and writes"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == RUN_FILES
    assert sorted(p.name for p in (out / "adapter").iterdir()) == [
        "adapter.safetensors", "adarank_adapter.json", "adarank_export.json"
    ]  # fmt: skip


def test_launch_whose_processes_would_train_alone_is_refused() -> None:
    check_launch(2, 2)
    with pytest.raises(RuntimeError, match="started 2 processes .* world size 1: each process would train alone"):
        check_launch(2, 1)
