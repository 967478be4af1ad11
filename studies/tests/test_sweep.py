"""studies/sweep.py: a grid of real (tiny) runs, resumable, tabulated in CSV and Markdown."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model, tiny_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "studies" / "sweep.py"


def _sweep(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_sweep_runs_grid_resumes_and_tabulates(tmp_path: Path) -> None:
    model = tmp_path / "model"
    save_tiny_model(model, llama=False)
    methods = [str(ROOT / "configs" / f"rt-minilm-{m}.yaml") for m in ("adalora", "lora")]
    common = ["--methods", *methods, "--budgets", "budget.target_params=2000", "--seeds", "0", "--out",
              str(tmp_path / "sweep"), "--set", f"model.name_or_path={model}", "train.max_steps=4",
              "train.batch_size=8", "data.max_train_samples=32", "data.max_eval_samples=16", "budget.t_init=1",
              "budget.t_final=1", "budget.mask_interval=1", "wandb.mode=disabled"]  # fmt: skip
    first = _sweep(*common)
    assert "[1/2] rt-minilm-adalora budget.target_params=2000 seed 0: done" in first
    assert "[2/2] rt-minilm-lora budget.target_params=2000 seed 0: done" in first
    second = _sweep(*common)
    assert second.count(": skipped") == 2 and "$ " not in second
    with open(tmp_path / "sweep" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["status"]) for r in rows] == [("rt-minilm-adalora", "done"), ("rt-minilm-lora", "done")]
    # 8 tiny adapters cost 65 per triplet: AdaLoRA fits 30 triplets (1,950) in 2,000; LoRA rank 3 = 24 (1,560)
    assert [int(r["adapter_params_final"]) for r in rows] == [1950, 1560]
    table = (tmp_path / "sweep" / "results.md").read_text()
    assert "| rt-minilm-adalora | budget.target_params=2000 | 1 |" in table
    point = json.loads(next((tmp_path / "sweep" / "rt-minilm-lora").glob("*/seed0/sweep.json")).read_text())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    assert re.fullmatch(re.escape(head.stdout.strip()) + r"(\+dirty)?", point["commit"])  # the code each run used


@pytest.mark.slow
def test_peft_runners_in_parallel_and_tables_cover_earlier_grids(tmp_path: Path) -> None:
    model = tmp_path / "model"
    save_tiny_model(model, llama=False)
    config = str(ROOT / "configs" / "rt-minilm-adalora.yaml")
    common = ["--seeds", "0", "--out", str(tmp_path / "sweep"), "--set", f"model.name_or_path={model}",
              "train.max_steps=6", "train.batch_size=8", "data.max_train_samples=48", "data.max_eval_samples=16",
              "budget.t_init=1", "budget.t_final=1", "budget.mask_interval=1", "wandb.mode=disabled"]  # fmt: skip
    budget = "budget.target_params=1560 budget.init_rank=4"
    out = _sweep(
        "--methods", f"peft-lora:{config}", f"peft-adalora:{config}", "--budgets", budget, "--jobs", "2", *common
    )
    assert out.count(": done") == 2 and "studies/peft_run.py lora" in out and "studies/peft_run.py adalora" in out
    _sweep("--methods", config, "--budgets", budget, *common)  # a second grid into the same folder
    with open(tmp_path / "sweep" / "results.csv") as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"peft-adalora_rt-minilm-adalora", "peft-lora_rt-minilm-adalora", "rt-minilm-adalora"}
    assert all(r["status"] == "done" for r in rows.values())
    # PEFT LoRA: the rank adarank's constant schedule gets, 3 on 8 modules of 64 -> 1,536 parameters
    assert (
        rows["peft-lora_rt-minilm-adalora"]["total_rank_final"],
        rows["peft-lora_rt-minilm-adalora"]["adapter_params_final"],
    ) == ("24", "1536")
    # PEFT AdaLoRA 4 -> 3 per module: it allocated (32 -> 24 live triplets), so update_and_allocate ran
    peft_ada = rows["peft-adalora_rt-minilm-adalora"]
    assert (peft_ada["trainable_params_initial"], peft_ada["total_rank_final"], peft_ada["adapter_params_final"]) == (
        "2080", "24", "1560")  # fmt: skip


@pytest.mark.slow
def test_peft_adalora_on_a_generation_config_reports_adaranks_generation_metrics(tmp_path: Path) -> None:
    """PEFT's AdaLoRA on a causal LM (tiny Llama, all 7 linear types of 2 blocks), the budget-curve
    study's arm at one rank per module: 14 live triplets at the end, metrics under adarank's keys."""
    model = tmp_path / "llama"
    save_tiny_model(model, llama=True)
    command = [sys.executable, str(ROOT / "studies" / "peft_run.py"), "adalora",
               str(ROOT / "studies" / "configs" / "rt-smollm2-curve.yaml"), f"model.name_or_path={model}",
               "train.max_steps=6",
               "data.max_train_samples=48", "data.max_eval_samples=16", "budget.t_init=1", "budget.t_final=2",
               "budget.mask_interval=1", "budget.target_rank=1", "budget.init_rank=2", "wandb.mode=disabled",
               f"output_dir={tmp_path / 'o'}"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["total_rank_final"] == 14 and metrics["peft_config"]["task_type"] == "CAUSAL_LM"
    assert metrics["trainable_params_initial"] == 2 * sum(2 * (i + o + 1) for i, o in TINY_LLAMA_LINEARS)
    for key in ("test_accuracy", "validation_accuracy"):
        assert metrics[key] * 16 == round(metrics[key] * 16)  # a count of 16 rows
    assert metrics["test_answer_loss"] > 0 and metrics["validation_answer_loss"] > 0


# (d_in, d_out) of the tiny Llama's linears: q, k, v, o (1 key/value head of 16), gate, up, down
TINY_LLAMA_LINEARS = [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)]


def test_peft_adalora_refuses_a_budget_that_is_not_whole_ranks(tmp_path: Path) -> None:
    model = tmp_path / "model"
    save_tiny_model(model, llama=False)
    script, config = ROOT / "studies" / "peft_run.py", ROOT / "configs" / "rt-minilm-adalora.yaml"
    command = [sys.executable, str(script), "adalora", str(config), f"model.name_or_path={model}",
               "budget.target_params=2000", "budget.init_rank=4", f"output_dir={tmp_path / 'o'}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0
    assert "PEFT's AdaLoRA budget is in ranks: 2,000 parameters is not a whole rank per module" in done.stderr
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_a_run_never_gets_more_threads_than_the_caller_allows() -> None:
    """Two studies on 2 cores launched with OMP_NUM_THREADS=1 must run 1 thread each, not the cores
    (4 OpenMP threads on 2 cores ran each study several times slower)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sweep import run_threads

    assert run_threads(2, 1, None) == 2 and run_threads(2, 1, "1") == 1 and run_threads(8, 2, "2") == 2
    assert run_threads(8, 2, "16") == 4 and run_threads(2, 4, None) == 1  # never above cores / jobs, never 0
    assert run_threads(2, 1, "") == 2 and run_threads(2, 1, "x") == 2 and run_threads(2, 1, "0") == 2


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_peft_runs_train_with_the_head_on_the_scored_tokens_alone(method: str, tmp_path: Path) -> None:
    """PEFT's LoRA and AdaLoRA (its orthogonality penalty inside forward) on a causal LM, through the PEFT
    runner's Trainer: its training loss and adapter gradients are the whole batch's, while the head sees
    each row's scored positions (3 rows x the most any row has, 2: 2 + 1 + 2 scored and one padding), so
    training times compare with adarank's."""
    from peft import AdaLoraConfig, LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM, TrainingArguments

    sys.path.insert(0, str(ROOT / "studies"))
    from peft_run import ScoredLossTrainer

    torch.manual_seed(0)
    base = LlamaForCausalLM(tiny_config(True, vocab_size=100, max_position_embeddings=64, num_key_value_heads=1))
    targets = ["q_proj", "v_proj", "down_proj"]
    config = (
        LoraConfig(r=2, target_modules=targets, init_lora_weights=False)
        if method == "lora"
        else AdaLoraConfig(init_r=2, target_r=1, target_modules=targets, total_step=10, orth_reg_weight=0.5)
    )
    model = get_peft_model(base, config)
    if method == "adalora":  # PEFT starts lambda at 0: move it so the penalty and gradients are not trivial
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_E" in name:
                    p.normal_()
    ids = torch.randint(5, 90, (3, 7), generator=torch.Generator().manual_seed(1))
    labels = torch.full_like(ids, -100)
    labels[0, 4:6], labels[1, 6], labels[2, 2:4] = ids[0, 4:6], ids[1, 6], ids[2, 2:4]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    head_rows: list[int] = []
    base.lm_head.register_forward_hook(lambda _m, args, _o: head_rows.append(args[0].shape[:-1].numel()))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = ScoredLossTrainer(model=model, args=args)
    model.train()

    def loss_and_grads(loss: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return float(loss.detach()), grads

    full_loss, full_grads = loss_and_grads(model(**batch).loss)
    loss, grads = loss_and_grads(trainer.compute_loss(model, dict(batch)))
    assert head_rows == [3 * 7, 3 * 2]
    assert math.isclose(loss, full_loss, rel_tol=1e-6) and grads.keys() == full_grads.keys()
    assert len(grads) == 3 * 2 * (2 if method == "lora" else 3)  # A, B (and E) of 3 modules in 2 blocks
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-5, atol=1e-7)


def test_peft_eva_starts_from_singular_vectors_of_the_inputs_within_lora_rank_budget(tmp_path: Path) -> None:
    """PEFT's EVA on the fact task's LoRA config (tiny Llama, all 7 linear types of 2 blocks, r = 1): A
    starts from singular vectors of the modules' inputs (unit rows, unlike LoRA's random A), the 14 ranks
    stay 14 in all with at most 2 (rho 2) per module, and a run reports the parameters those ranks cost."""
    from peft import get_peft_model

    from adarank.checks import load_config
    from adarank.core.inject import module_shapes
    from adarank.data import load_task
    from adarank.data.tasks import build_datasets
    from adarank.io.models import load_model
    from studies.facts import draw, write
    from studies.peft_run import _eva_init, live_ranks, peft_config

    model, facts = tmp_path / "llama", tmp_path / "facts"
    save_tiny_model(model, llama=True)
    facts.mkdir()
    write(draw(32, seed=1), facts)
    config = ROOT / "studies" / "configs" / "facts-smollm2-lora.yaml"
    overrides = [f"model.name_or_path={model}", f"data.dataset={facts}", "train.max_steps=4", "train.batch_size=8",
                 "wandb.mode=disabled", f"output_dir={tmp_path / 'o'}"]  # fmt: skip
    cfg = load_config(config, overrides)
    tokenizer, base, _ = load_model(cfg.model, generation=True, num_labels=2, label_names=None)
    lora = get_peft_model(base, peft_config("eva", cfg, module_shapes(base, cfg.adapter.target_modules), 0))
    _eva_init(lora, build_datasets(tokenizer, cfg, load_task(cfg.data))["train"], tokenizer, cfg)
    ranks = live_ranks(lora)
    assert len(ranks) == 14 and sum(ranks.values()) == 14 and max(ranks.values()) <= 2
    rows = [m.lora_A["default"].weight for m in lora.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    norms = torch.cat([row.norm(dim=1) for row in rows])
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4), "A's rows are singular vectors"

    command = [sys.executable, str(ROOT / "studies" / "peft_run.py"), "eva", str(config), *overrides]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["ranks"] == ranks, "the same draw and batches give the same redistribution"
    shapes = dict(zip(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      TINY_LLAMA_LINEARS, strict=True))  # fmt: skip
    cost = sum(r * sum(shapes[name.rsplit(".", 1)[1]]) for name, r in ranks.items())
    assert metrics["adapter_params_final"] == cost and metrics["total_rank_final"] == 14
    assert metrics["steps"] == 4 and metrics["test_answer_loss"] > 0
