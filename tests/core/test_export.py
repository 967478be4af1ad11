"""Exports round-trip exactly: native reload, PEFT LoRA and merged weights give the trained model's
logits, on BERT-like and Llama-like models with mixed ranks, rank-0 modules and suffix-trap names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model, tiny_bert
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from adarank import BudgetConfig, RankAllocator, inject_adapters, orthogonality_penalty, param_groups
from adarank.core.export import (
    ExportError,
    export_merged,
    export_native,
    export_peft,
    load_adapter,
    swap_adapter,
)
from adarank.core.inject import find_adapters

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


# --- issue 13: the path a user takes (a NEW head, the CLI, loaders from peft / transformers alone) ---

TEXTS = ["a gripping, beautifully acted film", "dull and far too long", "an instant classic", "not worth a ticket"]


def _text_batch(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))


def _logits_of(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(**batch).logits
    model.train(was_training)
    return out


def _train_and_capture(tmp_path: Path, monkeypatch, base: Path | None, overrides: list[str]) -> tuple[Path, dict]:
    """`adarank train` as a user runs it; the logits of the trained in-memory model are taken at the
    moment run.py exports it (a spy around export_native), before anything is written or reloaded."""
    import adarank.run as run_module
    from adarank.cli import main
    from adarank.data import default_model_path

    folder = base or default_model_path()
    batch = _text_batch(folder)
    captured: dict = {}
    real_export = run_module.export_native

    def spy(model, out, *args, **kwargs):
        captured["logits"] = _logits_of(model, batch)
        captured["batch"] = batch
        return real_export(model, out, *args, **kwargs)

    monkeypatch.setattr(run_module, "export_native", spy)
    run = tmp_path / "run"
    model_key = [f"model.name_or_path={base}"] if base else []
    assert main(["train", f"output_dir={run}", *model_key, "train.max_steps=6", "train.batch_size=8",
                 "data.max_train_samples=48", "data.max_eval_samples=8", "budget.init_rank=3", "budget.t_init=1",
                 "budget.t_final=2", "budget.mask_interval=1", "train.learning_rate=1e-2",
                 "wandb.mode=disabled", *overrides]) == 0  # fmt: skip
    return run, captured


CASES = {
    # name: (saved base or None for the embedded MiniLM, train overrides, loader class names)
    "minilm-new-head": (None, ["budget.target_params=4000"], "SequenceClassification"),
    "llama-causal": (
        "llama",
        ["data.format=generation", "adapter.target_modules=[all-linear]", "budget.target_params=900"],
        "CausalLM",
    ),  # fmt: skip
    "gpt2-conv1d": (
        "gpt2",
        ["data.format=generation", "adapter.target_modules=[all-linear]", "budget.target_params=900"],
        "CausalLM",
    ),  # fmt: skip
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_cli_exports_load_with_peft_and_transformers_alone(case: str, tmp_path: Path, monkeypatch) -> None:
    import transformers
    from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification

    from adarank.cli import main
    from adarank.data import default_model_path

    kind, overrides, task = CASES[case]
    base = None
    if kind is not None:
        base = tmp_path / kind
        save_tiny_model(base, llama=kind == "llama", gpt2=kind == "gpt2")
    run, captured = _train_and_capture(tmp_path, monkeypatch, base, overrides)
    expected, batch = captured["logits"], captured["batch"]
    folder = base or default_model_path()
    auto = getattr(transformers, f"AutoModelFor{task}")
    fresh = (
        (lambda: auto.from_pretrained(folder, num_labels=2)) if base is None else (lambda: auto.from_pretrained(folder))
    )
    ranks = json.loads((run / "allocation.json").read_text())
    assert 0 in ranks.values() and any(ranks.values()), f"mixed ranks wanted, got {ranks}"
    for fmt in ("native", "peft", "merged"):
        assert main(["export", str(run), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
        assert json.loads((tmp_path / fmt / "adarank_export.json").read_text())["format"] == fmt

    native = fresh()
    load_adapter(native, tmp_path / "native")
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    auto_peft = AutoPeftModelForSequenceClassification if base is None else AutoPeftModelForCausalLM
    loaded = {
        "native": native,
        "peft (PeftModel)": PeftModel.from_pretrained(fresh(), str(tmp_path / "peft")),
        "peft (AutoPeftModel)": auto_peft.from_pretrained(str(tmp_path / "peft")),
        "merged": auto.from_pretrained(tmp_path / "merged"),
    }
    for name, model in loaded.items():
        diff = (_logits_of(model, batch) - expected).abs().max().item()
        assert diff <= 1e-5, f"{name}: logits differ from the trained model's by {diff}"
    assert peft_config["base_model_name_or_path"] == str(folder)
    card = (tmp_path / "peft" / "README.md").read_text()
    live = {n: r for n, r in ranks.items() if r}
    assert all(f"| `{n}` | {r} |" in card for n, r in live.items())
    meta = json.loads((tmp_path / "native" / "adarank_adapter.json").read_text())
    assert meta["ranks"] == ranks, "a re-export lists every module, rank-0 ones included"
    if base is None:  # the new head is carried by every format
        assert meta["trained_parameters"] == ["classifier.bias", "classifier.weight"]
        assert peft_config["task_type"] == "SEQ_CLS" and "classifier" in peft_config["modules_to_save"]
    else:
        assert meta["trained_parameters"] == [] and peft_config["task_type"] == "CAUSAL_LM"
        assert peft_config["fan_in_fan_out"] is (kind == "gpt2")


@pytest.mark.slow
def test_all_modules_at_rank_zero_export_carries_only_the_head(tmp_path: Path, monkeypatch, capsys) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from adarank.cli import main
    from adarank.data import default_model_path

    run, captured = _train_and_capture(tmp_path, monkeypatch, None, ["budget.target_rank=0"])
    assert set(json.loads((run / "allocation.json").read_text()).values()) == {0}
    assert main(["export", str(run), "--format", "native", "--out", str(tmp_path / "native")]) == 0
    tensors = load_file(str(tmp_path / "native" / "adapter.safetensors"))
    assert sorted(tensors) == ["trained.classifier.bias", "trained.classifier.weight"]
    model = AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=2)
    assert load_adapter(model, tmp_path / "native") == {}
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]
    assert (_logits_of(model, captured["batch"]) - captured["logits"]).abs().max() <= 1e-5
    assert main(["export", str(run), "--format", "peft", "--out", str(tmp_path / "peft")]) == 2
    assert "no adapter has a live triplet" in capsys.readouterr().err and not (tmp_path / "peft").exists()


def test_export_reads_the_record_not_requires_grad(tmp_path: Path) -> None:
    model, _ = train_tiny(tiny_bert)
    native = export_native(model, tmp_path / "a", BASE)
    reloaded = tiny_bert()
    torch.nn.init.normal_(reloaded.classifier.weight)  # a new, random head: the export's must replace it
    assert (logits(reloaded) - logits(model)).abs().max() > 1e-3
    load_adapter(reloaded, native)
    reloaded.requires_grad_(False)  # whatever flags a user or a loader sets afterwards
    again = export_native(reloaded, tmp_path / "b", BASE)
    meta = json.loads((again / "adarank_adapter.json").read_text())
    assert meta["trained_parameters"] == ["classifier.bias", "classifier.weight"]
    assert (logits(reloaded) - logits(model)).abs().max() <= 1e-5
    reloaded.bert.embeddings.word_embeddings.weight.requires_grad_(True)  # trained by hand, not recorded
    with pytest.warns(UserWarning, match="not recorded as trained and will not be exported"):
        export_native(reloaded, tmp_path / "c", BASE)


def test_swap_adapter_is_atomic(tmp_path: Path, monkeypatch) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    import adarank.core.native as export_module

    first, _ = train_tiny(tiny_bert, seed=1)
    second, _ = train_tiny(tiny_bert, seed=2)
    good = export_native(second, tmp_path / "good", BASE)
    model = tiny_bert()
    load_adapter(model, export_native(first, tmp_path / "first", BASE))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapters_before = find_adapters(model)

    def unchanged() -> None:
        after = model.state_dict()
        assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
        assert find_adapters(model) == adapters_before

    wider = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64))  # fmt: skip
    adapters = inject_adapters(wider, ["all-linear"], rank=2, alpha=4, modules_to_save=["classifier"])
    for adapter in adapters.values():
        torch.nn.init.normal_(adapter.singular_values)
    misfit = export_native(wider, tmp_path / "misfit", BASE)
    with pytest.raises(ExportError, match="cannot swap in .*The model is unchanged"):
        swap_adapter(model, misfit)
    unchanged()

    headless = tiny_bert()
    inject_adapters(headless, ["all-linear"], rank=2, alpha=4)  # trains no head
    with pytest.raises(ExportError, match="the current adapter trained `classifier.bias`"):
        swap_adapter(model, export_native(headless, tmp_path / "headless", BASE))
    unchanged()

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(export_module, "build_adapters", broken)  # a failure after the old adapters came off
    with pytest.raises(RuntimeError, match="disk on fire"):
        swap_adapter(model, good)
    unchanged()
    monkeypatch.undo()
    swap_adapter(model, good)
    assert (logits(model) - logits(second)).abs().max() <= 1e-5


@pytest.mark.parametrize("fmt", ["native", "peft", "merged"])
def test_overwrite_replaces_only_an_earlier_export(fmt: str, tmp_path: Path) -> None:
    model, _ = train_tiny(tiny_bert)
    write = {
        "native": lambda out, overwrite=False: export_native(model, out, BASE, overwrite),
        "peft": lambda out, overwrite=False: export_peft(model, out, "tiny", overwrite),
        "merged": lambda out, overwrite=False: export_merged(model, out, overwrite=overwrite),
    }[fmt]
    user = tmp_path / "notes"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    for folder in (user, run):
        for overwrite in (False, True):
            with pytest.raises(ExportError, match="not an adarank export .*never other files"):
                write(folder, overwrite)
    assert (user / "thesis.tex").read_text() == "years of work" and (run / "metrics.json").is_file()
    earlier = write(tmp_path / "export")
    (earlier / "stale.txt").write_text("from the earlier export")
    with pytest.raises(ExportError, match="already exists; choose another --out or pass --overwrite"):
        write(earlier)
    write(earlier, overwrite=True)
    assert not (earlier / "stale.txt").exists() and (earlier / "adarank_export.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write(empty) == empty  # an empty folder is a fine destination
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "no temporary folder left"


def test_cli_export_of_a_missing_folder_says_it_does_not_exist(tmp_path: Path, capsys) -> None:
    from adarank.cli import main

    assert main(["export", str(tmp_path / "nope"), "--format", "native", "--out", str(tmp_path / "x")]) == 2
    assert f"`{tmp_path / 'nope'}` does not exist" in capsys.readouterr().err


def test_export_functions_take_str_paths(tmp_path: Path) -> None:
    model, _ = train_tiny(tiny_bert)
    from adarank import save_adapter

    assert export_native(model, str(tmp_path / "n"), BASE) == tmp_path / "n"
    assert export_peft(model, str(tmp_path / "p"), "tiny") == tmp_path / "p"
    assert export_merged(model, str(tmp_path / "m")) == tmp_path / "m"
    saved = save_adapter(model, str(tmp_path / "s"))
    save_adapter(model, saved)  # like save_pretrained, a second save replaces the first
    reloaded = tiny_bert()
    load_adapter(reloaded, saved)
    assert (logits(reloaded) - logits(model)).abs().max() <= 1e-5
