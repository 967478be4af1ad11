"""Compatibility with what adarank 0.1.0 wrote: the run directory and exports frozen in
tests/fixtures/v0_1 (its README.md says how they were made) are read by `adarank inspect`, `export`,
`compare` and `analyze` and give the same ranks, updates and logits. Every test works on a copy in tmp_path."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from adarank.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "v0_1"
SENTENCES = ["a gripping, funny and humane film.", "dull, and far too long."]
FIXTURE_FILES = {
    "README.md",
    "peft/README.md",
    "peft/adapter_config.json",
    "peft/adapter_model.safetensors",
    "peft/adarank_export.json",
    "run/adapter/adapter.safetensors",
    "run/adapter/adarank_adapter.json",
    "run/adapter/adarank_export.json",
    "run/allocation.json",
    "run/allocation_history.json",
    "run/config.yaml",
    "run/metrics.json",
    "run/rank_trace.json",
    "run/train_log.json",
    "run/trainer/checkpoint-20/adarank_allocator.json",
    "run/trainer/checkpoint-20/adarank_scores.safetensors",
    "run/trainer/checkpoint-20/trainer_state.json",
}


@pytest.fixture
def v01(tmp_path: Path) -> Path:
    """A copy of the fixture (never written in place)."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "v0_1"))


def _ranks(v01: Path) -> dict[str, int]:
    return json.loads((v01 / "run" / "allocation.json").read_text())


def _base():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from adarank.data import default_model_path

    folder = default_model_path()
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    return AutoTokenizer.from_pretrained(folder), model


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _peft_updates(folder: Path) -> dict[str, torch.Tensor]:
    """Module name -> its update (alpha / r) B A, from a PEFT LoRA export."""
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for pattern, rank in config["rank_pattern"].items():
        name = pattern.replace("\\", "")
        a, b = (tensors[f"base_model.model.{name}.lora_{x}.weight"] for x in "AB")
        out[name] = b.double() @ a.double() * (config["alpha_pattern"][pattern] / rank)
    return out


def test_fixture_is_the_frozen_v0_1_run() -> None:
    """The fixture holds exactly the files its README lists, consistent with one another: the same final
    ranks in allocation.json, the native adapter, the PEFT export and the last checkpoint, and no weights
    in that checkpoint."""
    files = {str(p.relative_to(FIXTURE)) for p in FIXTURE.rglob("*") if p.is_file()}
    assert files == FIXTURE_FILES
    assert sum((FIXTURE / f).stat().st_size for f in files) < 3_000_000
    ranks = _ranks(FIXTURE)
    assert len(ranks) == 12 and sum(ranks.values()) == 24 and sorted(set(ranks.values())) == [1, 2, 3]
    assert json.loads((FIXTURE / "run" / "adapter" / "adarank_adapter.json").read_text())["ranks"] == ranks
    checkpoint = FIXTURE / "run" / "trainer" / "checkpoint-20"
    allocator = json.loads((checkpoint / "adarank_allocator.json").read_text())
    assert allocator["last_step"] == 20 and allocator["finalized"] is True and allocator["shrunk_ranks"] == ranks
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 20
    peft = json.loads((FIXTURE / "peft" / "adapter_config.json").read_text())
    assert {k.replace("\\", ""): r for k, r in peft["rank_pattern"].items()} == ranks
    metrics = json.loads((FIXTURE / "run" / "metrics.json").read_text())
    assert (metrics["total_rank_final"], metrics["steps"], metrics["adapter_params_final"]) == (24, 20, 18456)
    assert metrics["adapter_params_final"] == sum(r * (384 + 384 + 1) for r in ranks.values())


@pytest.mark.parametrize("where", ["run", "run/adapter", "run/allocation.json"])
def test_inspect_reports_the_frozen_ranks(v01: Path, where: str, capsys) -> None:
    """`adarank inspect` of the run, its adapter folder and its allocation.json: the table's cells are
    allocation.json's ranks (layer x weight type), its sums and summary line match."""
    ranks = _ranks(v01)
    assert main(["inspect", str(v01 / where)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = lines[0].split()
    assert header == ["layer", "attention.self.query", "attention.self.value", "sum"]
    shown = {}
    for line in lines[1:7]:
        layer, *cells, total = line.split()
        for kind, cell in zip(header[1:-1], cells, strict=True):
            shown[f"bert.encoder.layer.{layer}.{kind}"] = int(cell)
        assert int(total) == sum(int(c) for c in cells)
    assert shown == ranks
    assert lines[7].split() == ["sum", "12", "12", "24"]
    assert lines[8] == "12 adapters, total rank 24, 0 at rank 0"


def test_export_native_reproduces_the_run_adapter(v01: Path) -> None:
    """A native export of the old run's adapter carries the same metadata and the same tensors."""
    assert main(["export", str(v01 / "run"), "--format", "native", "--out", str(v01 / "native")]) == 0
    old = json.loads((v01 / "run" / "adapter" / "adarank_adapter.json").read_text())
    new = json.loads((v01 / "native" / "adarank_adapter.json").read_text())
    for key in ("format_version", "base_model", "ranks", "scaling", "shapes", "trained_parameters"):
        assert new[key] == old[key], key
    old_t = load_file(str(v01 / "run" / "adapter" / "adapter.safetensors"))
    new_t = load_file(str(v01 / "native" / "adapter.safetensors"))
    assert sorted(new_t) == sorted(old_t)
    for name, tensor in old_t.items():
        torch.testing.assert_close(new_t[name], tensor, rtol=0, atol=0, msg=name)


def test_export_peft_and_merged_give_the_adapter_logits(v01: Path) -> None:
    """`adarank export` of the old run to PEFT and to merged weights: the PEFT config's rank_pattern is the
    final ranks, its updates equal the frozen PEFT export's, and the merged model, the new PEFT export and the
    frozen one (loaded with peft) give the adapter-loaded model's logits within 1e-5."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from adarank.core.export import load_adapter

    ranks = _ranks(v01)
    run = str(v01 / "run")
    assert main(["export", run, "--format", "peft", "--out", str(v01 / "peft_new")]) == 0
    assert main(["export", run, "--format", "merged", "--out", str(v01 / "merged")]) == 0

    config = json.loads((v01 / "peft_new" / "adapter_config.json").read_text())
    frozen = json.loads((v01 / "peft" / "adapter_config.json").read_text())
    assert {re.sub(r"\\(.)", r"\1", k): r for k, r in config["rank_pattern"].items()} == ranks
    for key in ("rank_pattern", "alpha_pattern", "task_type", "peft_type", "r", "lora_alpha"):
        assert config[key] == frozen[key], key
    assert sorted(config["target_modules"]) == sorted(frozen["target_modules"]) == sorted(ranks)
    assert "classifier" in config["modules_to_save"]
    new_updates, old_updates = _peft_updates(v01 / "peft_new"), _peft_updates(v01 / "peft")
    assert sorted(new_updates) == sorted(old_updates) == sorted(ranks)
    for name, update in old_updates.items():
        assert torch.linalg.matrix_rank(update).item() == ranks[name]
        torch.testing.assert_close(new_updates[name], update, rtol=0, atol=1e-7, msg=name)

    tokenizer, model = _base()
    load_adapter(model, v01 / "run" / "adapter")
    expected = _logits(model.eval(), tokenizer)
    assert expected.shape == (2, 2)
    models = {
        "merged": AutoModelForSequenceClassification.from_pretrained(v01 / "merged").eval(),
        "peft (new)": PeftModel.from_pretrained(_base()[1], str(v01 / "peft_new")).eval(),
        "peft (frozen)": PeftModel.from_pretrained(_base()[1], str(v01 / "peft")).eval(),
    }
    for label, other in models.items():
        assert (_logits(other, tokenizer) - expected).abs().max().item() <= 1e-5, label


def test_compare_the_run_with_itself(v01: Path, capsys) -> None:
    """`adarank compare` of the old run and a copy: every row shows the same value twice, read from
    metrics.json, config.yaml and allocation.json; compare.html is written with a heatmap per run."""
    shutil.copytree(v01 / "run", v01 / "again")
    out = v01 / "compare"
    assert main(["compare", str(v01 / "run"), str(v01 / "again"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 3:
            rows[cells[0]] = cells[1:]
    assert rows["method"] == ["AdaLoRA 4 -> rank 2"] * 2
    assert rows["total rank at the end"] == ["24", "24"]
    assert rows["adapter parameters at the end"] == ["18,456", "18,456"]
    assert rows["live trainable parameters at the end"] == ["19,226", "19,226"]
    assert rows["test accuracy"] == ["62.50%", "62.50%"]
    assert rows["validation accuracy"] == ["82.81%", "82.81%"]
    assert all(a == b for a, b in rows.values())
    page = (out / "compare.html").read_text()
    assert f"written: {out / 'compare.html'}" in text and "compare_rank_0.png" in page
    assert (out / "compare_rank_0.png").is_file() and (out / "compare_rank_1.png").is_file()
    config = yaml.safe_load((v01 / "run" / "config.yaml").read_text())
    assert config["budget"]["init_rank"] == 4 and config["budget"]["target_rank"] == 2


def test_analyze_the_old_adapter(v01: Path, capsys) -> None:
    """`adarank analyze` of the old run (and of it against a copy): one row per adapter at its final rank,
    singular values those of s P diag(lambda) Q computed here from adapter.safetensors, and a subspace
    similarity of 1 with itself."""
    ranks = _ranks(v01)
    assert main(["analyze", str(v01 / "run")]) == 0
    result = json.loads((v01 / "run" / "analysis" / "analysis.json").read_text())
    assert sorted(result["modules"]) == sorted(ranks)
    meta = json.loads((v01 / "run" / "adapter" / "adarank_adapter.json").read_text())
    tensors = load_file(str(v01 / "run" / "adapter" / "adapter.safetensors"))
    for name, rank in ranks.items():
        module = result["modules"][name]
        assert module["rank"] == rank and len(module["singular_values"]) == rank
        p, lam, q = (
            tensors[f"{name}.{part}"].double() for part in ("left_vectors", "singular_values", "right_vectors")
        )
        values = torch.linalg.svdvals(meta["scaling"][name] * p @ torch.diag(lam) @ q)[:rank]
        torch.testing.assert_close(torch.tensor(module["singular_values"], dtype=torch.float64), values,
                                   rtol=1e-6, atol=1e-9)  # fmt: skip
        assert 1 <= module["energy_rank_90"] <= rank and 1 - 1e-9 <= module["effective_rank"] <= rank + 1e-9
    assert (v01 / "run" / "analysis" / "analysis.html").is_file()
    capsys.readouterr()

    shutil.copytree(v01 / "run" / "adapter", v01 / "again")
    assert main(["analyze", str(v01 / "run"), str(v01 / "again"), "--out", str(v01 / "pair")]) == 0
    pair = json.loads((v01 / "pair" / "analysis.json").read_text())
    for name, module in pair["modules"].items():
        for side in ("output", "input"):
            assert module["similarity"][side]["phi_at_min_rank"] == pytest.approx(1.0, abs=1e-9), (name, side)
