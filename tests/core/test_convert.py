"""`adarank convert`: adapters trained with PEFT's own AdaLoRA (MiniLM with a new head; a causal Llama)
become PEFT LoRA folders that peft alone loads with the AdaLoRA adapter's logits; bad folders are refused
with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model
from transformers import AutoModelForSequenceClassification, LlamaForCausalLM

from adarank.cli import main
from adarank.core.native import load_adapter
from adarank.data import default_model_path

peft = pytest.importorskip("peft")
from peft import AdaLoraConfig, LoraConfig, PeftModel, get_peft_model  # noqa: E402


def _train_adalora(base: torch.nn.Module, config: AdaLoraConfig, inputs: dict, out: Path) -> None:
    """PEFT's AdaLoRA as its docs drive it: update_and_allocate after each optimizer step, 10 steps,
    past tfinal so the rank pattern is fixed; then save_pretrained."""
    model = get_peft_model(base, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    for step in range(10):
        model(**inputs).loss.backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    model.save_pretrained(str(out))


def _logits(make_base, folder: Path, inputs: dict) -> torch.Tensor:
    model = PeftModel.from_pretrained(make_base(), str(folder)).eval()
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


def _minilm() -> torch.nn.Module:
    torch.manual_seed(1)  # the head is drawn anew (and then replaced by the saved one)
    return AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=2)


CASES = ["minilm_new_head", "causal_llama"]


def _case(name: str, tmp_path: Path):
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (8, 12))
    if name == "minilm_new_head":
        targets = ["query", "value", "attention.output.dense"]
        config = AdaLoraConfig(task_type="SEQ_CLS", target_modules=targets, init_r=4, target_r=2, tinit=1, tfinal=3,
                               deltaT=1, total_step=10, lora_alpha=8)  # fmt: skip
        return _minilm, config, {"input_ids": ids, "labels": torch.randint(0, 2, (8,))}
    save_tiny_model(tmp_path / "llama", llama=True, initializer_range=0.3)  # at 0.02 the adapters barely move it
    config = AdaLoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj", "down_proj"], init_r=3,
                           target_r=1, tinit=1, tfinal=3, deltaT=1, total_step=10, lora_alpha=6)  # fmt: skip
    return (lambda: LlamaForCausalLM.from_pretrained(tmp_path / "llama")), config, {"input_ids": ids, "labels": ids}


@pytest.mark.parametrize("name", CASES)
def test_converted_lora_gives_the_adalora_logits(name: str, tmp_path: Path, capsys) -> None:
    make_base, config, inputs = _case(name, tmp_path)
    _train_adalora(make_base(), config, inputs, tmp_path / "adalora")
    saved = json.loads((tmp_path / "adalora" / "adapter_config.json").read_text())
    assert any(not all(mask) for mask in saved["rank_pattern"].values()), "PEFT pruned some triplets"
    command = ["convert", str(tmp_path / "adalora"), "--out", str(tmp_path / "lora"), "--native", str(tmp_path / "n")]
    assert main(command) == 0
    assert "PEFT LoRA written to" in capsys.readouterr().out
    written = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert written["peft_type"] == "LORA" and written["r"] == written["lora_alpha"]
    assert written["rank_pattern"] == written["alpha_pattern"], "scaling 1 in every module, per-module rule"
    assert written["lora_alpha"] / written["r"] == 1.0, "and by the global rule a server reading only r uses"
    kept = {name: sum(mask) for name, mask in saved["rank_pattern"].items()}
    assert sorted(written["rank_pattern"].values()) == sorted(r for r in kept.values() if r)
    torch.testing.assert_close(
        _logits(make_base, tmp_path / "lora", inputs), _logits(make_base, tmp_path / "adalora", inputs),
        rtol=0, atol=1e-5,
    )  # fmt: skip
    native = make_base().eval()  # the native export, loaded by adarank onto a fresh base: the same logits
    load_adapter(native, tmp_path / "n")
    with torch.no_grad():
        from_native = native(input_ids=inputs["input_ids"]).logits
    # lambda between P and Q instead of inside B: another order of float32 products, up to ~1.2e-5 here
    torch.testing.assert_close(from_native, _logits(make_base, tmp_path / "adalora", inputs), rtol=0, atol=5e-5)
    if name == "minilm_new_head":  # the trained head came along: a fresh base's own head differs
        fresh = _minilm().eval()
        with torch.no_grad():
            assert not torch.allclose(fresh(input_ids=inputs["input_ids"]).logits,
                                      _logits(make_base, tmp_path / "lora", inputs), atol=1e-3)  # fmt: skip


def test_every_bad_folder_is_refused_with_nothing_written(tmp_path: Path, capsys) -> None:
    make_base, config, inputs = _case("minilm_new_head", tmp_path)
    good = tmp_path / "adalora"
    _train_adalora(make_base(), config, inputs, good)

    def refused(source: Path, says: str, out: Path | None = None) -> None:
        out = out or tmp_path / "out"
        before = sorted(p.name for p in out.iterdir()) if out.exists() else None
        assert main(["convert", str(source), "--out", str(out)]) == 2
        assert says in capsys.readouterr().err
        assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before, "nothing written"
        assert not list(tmp_path.glob(".*partial*")), "no half-written folder left"

    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty, "is not a PEFT adapter folder (no adapter_config.json)")
    lora = tmp_path / "lora-adapter"
    get_peft_model(make_base(), LoraConfig(r=2, target_modules=["query"])).save_pretrained(str(lora))
    refused(lora, "is a PEFT LORA adapter, not AdaLoRA")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(good, no_weights)
    (no_weights / "adapter_model.safetensors").unlink()
    refused(no_weights, "has no adapter weights (adapter_model.safetensors or adapter_model.bin)")
    no_pattern = tmp_path / "no-pattern"
    shutil.copytree(good, no_pattern)
    meta = json.loads((no_pattern / "adapter_config.json").read_text())
    (no_pattern / "adapter_config.json").write_text(json.dumps({**meta, "rank_pattern": None}))
    refused(no_pattern, "the AdaLoRA config has no rank_pattern")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    refused(good, "is a non-empty folder that is not an adarank export", out=busy)
    assert (busy / "notes.txt").read_text() == "mine"
