"""The main job: bad input is refused before any work, and real (short) runs write the run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

from adarank.cli import main
from adarank.config import load_config
from adarank.data import default_model_path

ROOT = Path(__file__).parent.parent


def test_bad_config_is_refused_before_any_work(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["train", f"output_dir={out}", "budget.init_rnak=3", "budget.mask_interval=x"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown key `budget.init_rnak`. Did you mean `budget.init_rank`?" in err
    assert "`budget.mask_interval=x`" in err
    assert not out.exists()


def test_wrong_target_modules_refused_before_writing(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["train", f"output_dir={out}", "adapter.target_modules=[q_proj]", "wandb.mode=disabled"])
    err = capsys.readouterr().err
    assert code == 2
    assert "`q_proj` matches no module" in err and "bert.encoder.layer.<i>.attention.self.query" in err
    assert not out.exists()


def _check_run_dir(out: Path, steps: int) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    allocation = json.loads((out / "allocation.json").read_text())
    assert metrics["steps"] == steps
    assert metrics["total_rank_final"] == metrics["target_total_rank"] == sum(allocation.values())
    assert metrics["trainable_params_final"] < metrics["trainable_params_initial"]
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and metrics["train_seconds"] > 0
    cfg = load_config(out / "config.yaml", ["overwrite=true"])
    assert cfg.train.max_steps == steps
    return allocation


@pytest.mark.slow
def test_default_job_short_run(tmp_path) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "train",
            f"output_dir={out}",
            "train.max_steps=30",
            "data.max_train_samples=960",
            "data.max_eval_samples=64",
            "wandb.mode=disabled",
            "budget.mask_interval=2",
        ]
    )
    assert code == 0
    allocation = _check_run_dir(out, 30)
    assert len(allocation) == 24 and sum(allocation.values()) == 24 * 8
    assert len(set(allocation.values())) > 1, "the final rank pattern must be non-uniform"


def _save_tiny(folder: Path, llama: bool) -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    if llama:
        config = LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=128,
        )
        model = LlamaForCausalLM(config)  # a base checkpoint without a classification head
    else:
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.mark.slow
@pytest.mark.parametrize("llama", [False, True], ids=["bert-like", "llama-like"])
def test_local_model_folder(tmp_path, llama) -> None:
    folder = tmp_path / "model"
    _save_tiny(folder, llama)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            f"output_dir={out}",
            f"model.name_or_path={folder}",
            "adapter.target_modules=[all-linear]",
            "train.max_steps=12",
            "train.batch_size=8",
            "data.max_train_samples=96",
            "data.max_eval_samples=16",
            "budget.init_rank=3",
            "budget.target_rank=1",
            "budget.t_init=2",
            "budget.t_final=4",
            "budget.mask_interval=1",
            "wandb.mode=disabled",
        ]
    )
    assert code == 0
    allocation = _check_run_dir(out, 12)
    names = "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj" if llama else "query key value dense"
    assert {n.rsplit(".", 1)[1] for n in allocation} == set(names.split())


@pytest.mark.slow
def test_plain_loop_script() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plain_loop.py"), "--steps", "12", "--max-train", "256"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "step 8: budget" in done.stdout and "final ranks:" in done.stdout
