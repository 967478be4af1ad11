"""Default target modules by model family (adapter.target_modules=[auto], the default)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import save_tiny_model

from adarank.cli import main
from adarank.core.families import FAMILY_TARGETS, expand_targets

SHORT = ["train.max_steps=4", "train.batch_size=8", "data.max_train_samples=32", "data.max_eval_samples=8",
         "budget.init_rank=2", "budget.target_rank=1", "budget.t_init=1", "budget.t_final=1",
         "budget.mask_interval=1", "wandb.mode=disabled"]  # fmt: skip


def test_auto_expands_in_place_and_keeps_the_other_targets() -> None:
    assert expand_targets(["auto", "down_proj"], "qwen2") == ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
    assert expand_targets(["auto"], "bert") == ["query", "key", "value", "attention.output.dense"]
    assert expand_targets(["q_proj"], None) == ["q_proj"], "no `auto`: nothing to know about the family"
    with pytest.raises(ValueError, match="this model's family is `gpt_neox`: name the modules to adapt in adapter"):
        expand_targets(["auto"], "gpt_neox")
    assert {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gpt2", "bert", "roberta"} <= set(FAMILY_TARGETS)


@pytest.mark.slow
def test_a_llama_without_target_modules_trains_its_attention_projections(tmp_path: Path, capsys) -> None:
    save_tiny_model(tmp_path / "llama", llama=True)
    out = tmp_path / "run"
    assert main(["plan", f"model.name_or_path={tmp_path / 'llama'}", *SHORT]) == 0
    shown = capsys.readouterr().out
    assert "adapters: 8 (model.layers.<i>.self_attn.k_proj x2, model.layers.<i>.self_attn.o_proj x2, " in shown
    assert main(["train", f"output_dir={out}", f"model.name_or_path={tmp_path / 'llama'}", *SHORT]) == 0
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["adapter"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    allocation = yaml.safe_load((out / "allocation.json").read_text())
    assert {name.rsplit(".", 1)[1] for name in allocation} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert len(allocation) == 8


def test_an_unknown_family_is_refused_naming_the_key(tmp_path: Path, capsys) -> None:
    import torch
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    from adarank.data import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    tokenizer.eos_token = "[SEP]"
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    GPTNeoXForCausalLM(config).save_pretrained(tmp_path / "neox")
    tokenizer.save_pretrained(tmp_path / "neox")
    out = tmp_path / "run"
    assert main(["train", f"output_dir={out}", f"model.name_or_path={tmp_path / 'neox'}", *SHORT]) == 2
    err = capsys.readouterr().err
    assert "this model's family is `gpt_neox`: name the modules to adapt in adapter.target_modules" in err
    assert "gpt_neox.layers.<i>.attention.query_key_value" in err, "the error lists the model's linear modules"
    assert not out.exists()
