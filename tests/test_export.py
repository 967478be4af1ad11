"""Exports round-trip exactly: native reload, PEFT LoRA and merged weights give the trained model's
logits, on BERT-like and Llama-like models with mixed ranks, rank-0 modules and suffix-trap names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from adarank import BudgetConfig, RankAllocator, inject_adapters, orthogonality_penalty, param_groups
from adarank.export import (
    ExportError,
    export_merged,
    export_native,
    export_peft,
    load_adapter,
    swap_adapter,
)
from adarank.inject import find_adapters

BASE = {"name_or_path": "tiny", "format": "classification", "num_labels": 2}


def tiny_llama(seed: int = 0) -> LlamaForSequenceClassification:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, num_labels=2,
                         pad_token_id=0)  # fmt: skip
    return LlamaForSequenceClassification(config).eval()


HEADS = {tiny_bert: "classifier", tiny_llama: "score"}


def _batch(seed: int, n: int = 8) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (n, 12), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": (ids[:, 0] > 50).long()}


def train_tiny(make, strict: bool = False, seed: int = 0, target: str = "500"):
    """10 plain-loop steps on a fresh tiny model with a parameter budget that forces rank-0 modules."""
    model = make()
    adapters = inject_adapters(model, ["all-linear"], rank=3, alpha=6, modules_to_save=[HEADS[make]], seed=seed)
    budget = BudgetConfig(init_rank=3, target_params=target, t_init=2, t_final=3, mask_interval=1, strict=strict)
    allocator = RankAllocator(adapters, budget, total_steps=10)
    optimizer = torch.optim.AdamW(param_groups(model, 1e-2, singular_lr_multiplier=10))
    model.train()
    for step in range(1, 11):
        loss = model(**_batch(seed * 100 + step)).loss + 0.1 * orthogonality_penalty(adapters.values())
        loss.backward()
        optimizer.step()
        allocator.step(step, optimizer)
        optimizer.zero_grad()
    allocator.check_finished()
    return model.eval(), allocator


def logits(model, seed: int = 999) -> torch.Tensor:
    batch = _batch(seed)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama"])
def test_three_formats_round_trip(make, strict: bool, tmp_path: Path) -> None:
    model, allocator = train_tiny(make, strict)
    ranks = allocator.ranks()
    assert 0 in ranks.values() and len(set(ranks.values())) > 1, ranks
    if make is tiny_bert:  # the suffix trap is in play: both names are adapted
        assert {"bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense"} <= set(ranks)
    expected = logits(model)

    native = export_native(model, tmp_path / "native", BASE)
    meta = json.loads((native / "adarank_adapter.json").read_text())
    assert meta["ranks"] == ranks and meta["format_version"] == 1
    reloaded = make()
    load_adapter(reloaded, native)
    assert {n: a.live_rank() for n, a in find_adapters(reloaded).items()} == {n: r for n, r in ranks.items() if r}
    assert (logits(reloaded) - expected).abs().max() <= 1e-5

    peft_dir = export_peft(model, tmp_path / "peft", "tiny")
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {n for n, r in ranks.items() if r}
    peft_model = PeftModel.from_pretrained(make(), str(peft_dir)).eval()
    lora_ranks = {n: m.r["default"] for n, m in peft_model.get_base_model().named_modules() if hasattr(m, "lora_A")}
    assert lora_ranks == {n: r for n, r in ranks.items() if r}
    assert (logits(peft_model) - expected).abs().max() <= 1e-5

    merged_dir = export_merged(model, tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert not find_adapters(merged)
    assert (logits(merged) - expected).abs().max() <= 1e-5


def test_native_size_scales_with_the_budget(tmp_path: Path) -> None:
    sizes = []
    for target in ("300", "900", "2000"):
        model, _ = train_tiny(tiny_bert, target=target)
        sizes.append((export_native(model, tmp_path / target, BASE) / "adapter.safetensors").stat().st_size)
    assert sizes[0] < sizes[1] < sizes[2]


def test_merge_is_idempotent_and_unmerge_restores(tmp_path: Path) -> None:
    model, _ = train_tiny(tiny_bert)
    expected = logits(model)
    weights = {n: a.base.weight.clone() for n, a in find_adapters(model).items()}
    for adapter in find_adapters(model).values():
        adapter.merge()
        adapter.merge()  # a second merge must not add the update twice
    assert (logits(model) - expected).abs().max() <= 1e-5
    for name, adapter in find_adapters(model).items():
        adapter.unmerge()
        adapter.unmerge()
        torch.testing.assert_close(adapter.base.weight, weights[name], atol=1e-6, rtol=0)
    assert (logits(model) - expected).abs().max() <= 1e-6


def test_swap_one_adapter_for_another(tmp_path: Path) -> None:
    first, _ = train_tiny(tiny_bert, seed=1)
    second, _ = train_tiny(tiny_bert, seed=2)
    a, b = export_native(first, tmp_path / "a", BASE), export_native(second, tmp_path / "b", BASE)
    model = tiny_bert()
    load_adapter(model, a)
    assert (logits(model) - logits(first)).abs().max() <= 1e-5
    swap_adapter(model, b)
    assert (logits(model) - logits(second)).abs().max() <= 1e-5
    assert (logits(first) - logits(second)).abs().max() > 1e-3, "the two adapters must differ"


def test_bad_inputs_give_clear_errors_and_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="has no adarank adapters"):
        export_native(tiny_bert(), tmp_path / "none", BASE)
    assert not (tmp_path / "none").exists()
    model, _ = train_tiny(tiny_bert)
    good = export_native(model, tmp_path / "good", BASE)
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    with pytest.raises(ExportError, match="already exists; choose another --out or pass --overwrite"):
        export_native(model, good, BASE)
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good"], "no temporary folder left behind"

    wider = tiny_bert()  # another architecture: hidden 48
    from transformers import BertConfig, BertForSequenceClassification

    wider = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64))  # fmt: skip
    with pytest.raises(ExportError, match="was made for another base model"):
        load_adapter(wider, good)
    assert not find_adapters(wider), "a refused load leaves the model untouched"

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "adarank_adapter.json").write_bytes((good / "adarank_adapter.json").read_bytes())
    (truncated / "adapter.safetensors").write_bytes((good / "adapter.safetensors").read_bytes()[:300])
    with pytest.raises(ExportError, match="is corrupt or truncated"):
        load_adapter(tiny_bert(), truncated)

    newer = tmp_path / "newer"
    newer.mkdir()
    meta = json.loads((good / "adarank_adapter.json").read_text())
    (newer / "adarank_adapter.json").write_text(json.dumps({**meta, "format_version": 99}))
    (newer / "adapter.safetensors").write_bytes((good / "adapter.safetensors").read_bytes())
    with pytest.raises(ExportError, match="has format version 99; this adarank .* reads up to 1: upgrade adarank"):
        load_adapter(tiny_bert(), newer)


@pytest.mark.slow
def test_cli_exports_a_run_in_three_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import save_tiny_model

    from adarank.cli import main

    save_tiny_model(tmp_path / "model", llama=False)
    run = tmp_path / "run"
    assert main(["train", f"output_dir={run}", f"model.name_or_path={tmp_path / 'model'}",
                 "adapter.target_modules=[all-linear]", "train.max_steps=8", "train.batch_size=8",
                 "data.max_train_samples=64", "data.max_eval_samples=16", "budget.init_rank=3",
                 "budget.target_params=600", "budget.t_init=2", "budget.t_final=2", "budget.mask_interval=1",
                 "wandb.mode=disabled"]) == 0  # fmt: skip
    allocation = json.loads((run / "allocation.json").read_text())
    assert json.loads((run / "adapter" / "adarank_adapter.json").read_text())["ranks"] == allocation
    trained = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model", num_labels=2)
    load_adapter(trained, run / "adapter")
    expected = logits(trained.eval())
    for fmt in ("native", "peft", "merged"):
        assert main(["export", str(run), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    assert "merged export written to" in capsys.readouterr().out
    peft_model = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "model", num_labels=2), str(tmp_path / "peft")
    ).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    native = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model", num_labels=2)
    load_adapter(native, tmp_path / "native")
    for model in (peft_model, merged, native.eval()):
        assert (logits(model) - expected).abs().max() <= 1e-5
    assert main(["export", str(run), "--format", "peft", "--out", str(tmp_path / "peft")]) == 2
    assert "already exists; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "model"), "--format", "peft", "--out", str(tmp_path / "x")]) == 2
    assert "is not an adarank adapter" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
