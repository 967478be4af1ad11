"""Loading for FSDP2 by rows (issue 42): each of two processes reads only its own rows of every weight
straight from the safetensors files (an index of several shards here, cast to bfloat16 on read), new
modules and computed buffers equal a one-process ``from_pretrained``, and a shard file missing or
truncated on one process stops every process at once, naming it."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import save_tiny_model

from adarank.io.rows import INDEX, open_rows

pytestmark = pytest.mark.slow


def _sharded_checkpoint(folder: Path) -> Path:
    """A tiny Llama LM with tied embeddings saved as several safetensors shards with an index."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    whole = folder.parent / "whole"
    save_tiny_model(whole, llama=True, tie_word_embeddings=True)
    LlamaForCausalLM.from_pretrained(whole).save_pretrained(folder, max_shard_size="40KB")
    AutoTokenizer.from_pretrained(whole).save_pretrained(folder)
    assert (folder / INDEX).is_file() and len(list(folder.glob("*.safetensors"))) > 2
    return folder


def _load_and_shard(rank: int, store: str, folder: str, generation: bool, out: str, bad: str | None) -> None:
    """One of two processes: ``load_model_sharded`` by rows, then ``shard_loaded_``; writes what it read
    and holds to ``out``/rank<R>.pt, or its error to rank<R>.txt. With ``bad``, process 1 sees that folder's
    files instead (a node whose copy of the checkpoint is damaged)."""
    import torch.distributed as dist

    import adarank.io.sharded as sharded
    from adarank.config import ModelConfig
    from adarank.core.sharding import local, local_rows, shard_loaded_

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))  # fmt: skip
    if bad and rank == 1:
        real = sharded.open_rows
        sharded.open_rows = lambda _folder: real(Path(bad))  # type: ignore[assignment]
    torch.manual_seed(0)
    try:
        _, model, new_modules = sharded.load_model_sharded(ModelConfig(name_or_path=folder, dtype="bfloat16"),
                                                           generation, 3)  # fmt: skip
        rows = model.adarank_rows
        model.requires_grad_(False)  # as adapters leave the base: FSDP2 shards only frozen parameters
        shard_loaded_(model, torch.device("cpu"))
        held = {n: local(p).detach().clone() for n, p in model.named_parameters()}
        spans = {n: (local_rows(p).start, local_rows(p).stop) for n, p in model.named_parameters()}
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        torch.save({"reads": rows.reads, "held": held, "spans": spans, "buffers": buffers, "new": new_modules},
                   Path(out) / f"rank{rank}.pt")  # fmt: skip
    except Exception as err:
        (Path(out) / f"rank{rank}.txt").write_text(f"{type(err).__name__}: {err}")
    dist.destroy_process_group()


def _two_processes(tmp_path: Path, folder: Path, generation: bool, bad: Path | None = None) -> list[Any]:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    out = tmp_path / "out"
    out.mkdir()
    args = (str(tmp_path / "store"), str(folder), generation, str(out), str(bad) if bad else None)
    workers = [context.Process(target=_load_and_shard, args=(rank, *args)) for rank in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    return [
        (out / f"rank{r}.txt").read_text() if (out / f"rank{r}.txt").exists() else torch.load(out / f"rank{r}.pt")
        for r in range(2)
    ]


@pytest.mark.parametrize("generation", [True, False], ids=["lm", "classifier"])
def test_each_process_reads_only_its_rows_and_holds_what_one_process_loads(tmp_path, generation) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    folder = _sharded_checkpoint(tmp_path / "model")
    stored = {k: v for f in folder.glob("*.safetensors") for k, v in load_file(f).items()}
    runs = _two_processes(tmp_path, folder, generation)
    assert all(isinstance(run, dict) for run in runs), runs
    torch.manual_seed(0)  # the one-process load under the same seed: the new head drawn from it
    auto = AutoModelForCausalLM if generation else AutoModelForSequenceClassification
    one = auto.from_pretrained(folder, dtype=torch.bfloat16, **({} if generation else {"num_labels": 3}))
    one_params = dict(one.named_parameters())
    assert runs[0]["new"] == runs[1]["new"] == ([] if generation else ["score"])
    for name, whole in one_params.items():
        spans = [run["spans"][name] for run in runs]
        assert spans[0][0] == 0 and spans[0][1] == spans[1][0] and spans[1][1] == whole.shape[0], name
        if name.startswith("score."):  # the new head: drawn as from_pretrained draws it, then kept in float32
            for run, (start, stop) in zip(runs, spans, strict=True):
                assert torch.equal(run["held"][name], whole.detach().float()[start:stop]), name
                assert not [r for r in run["reads"] if r[0].startswith("score.")], "not in the checkpoint"
            continue
        key = name if name in stored else name.removeprefix("model.")
        for run, (start, stop) in zip(runs, spans, strict=True):
            # read exactly its own rows of this weight, once: no process materialises a row it does not own
            assert [r for r in run["reads"] if r[0] == key] == [(key, start, stop)], name
            assert run["held"][name].dtype == torch.bfloat16
            assert torch.equal(run["held"][name], stored[key][start:stop].to(torch.bfloat16)), name
            assert torch.equal(run["held"][name], whole.detach()[start:stop]), name
    assert "lm_head.weight" not in stored, "tied: the checkpoint holds the embeddings once"
    for run in runs:
        assert len(run["reads"]) == len({r[0] for r in run["reads"]}), "each tensor read once"
        for name, buffer in one.named_buffers():  # rotary frequencies: computed, as from_pretrained computes them
            assert torch.equal(run["buffers"][name], buffer), name


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_shard_on_one_process_stops_every_process_naming_it(tmp_path, damage) -> None:
    folder = _sharded_checkpoint(tmp_path / "model")
    bad = tmp_path / "node1"
    shutil.copytree(folder, bad)
    victim = sorted(json.loads((bad / INDEX).read_text())["weight_map"].values())[-1]
    if damage == "truncated":
        data = (bad / victim).read_bytes()
        (bad / victim).write_bytes(data[: len(data) - 100])
    else:
        (bad / victim).unlink()
    runs = _two_processes(tmp_path, folder, True, bad=bad)
    word = "truncated" if damage == "truncated" else "missing"
    for run in runs:
        assert isinstance(run, str) and run.startswith("RuntimeError: cannot read the checkpoint by rows: process 1:")
        assert str(bad / victim) in run and word in run and "process 0" not in run


def test_read_rows_reads_a_row_range_and_refuses_a_short_file(tmp_path) -> None:
    from safetensors.torch import save_file

    weight = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    save_file({"w": weight, "s": torch.tensor(3.5)}, tmp_path / "model.safetensors")
    rows = open_rows(tmp_path)
    assert torch.equal(rows.read_rows("w", 2, 5), weight[2:5])
    assert rows.read_rows("w", 6, 6).shape == (0, 4)
    assert rows.read_rows("s", 0, 1).item() == 3.5
    assert rows.reads == [("w", 2, 5), ("w", 6, 6), ("s", 0, 1)]
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-8])
    with pytest.raises(OSError, match="truncated"):
        open_rows(tmp_path)


def _plan(folder: Path, generation: bool, num_labels: int = 3) -> dict[str, Any]:
    from adarank.config import ModelConfig
    from adarank.io.sharded import _plan_sharded_load

    _, plan = _plan_sharded_load(ModelConfig(name_or_path=str(folder)), generation, num_labels, None, True)
    return plan


def test_new_heads_are_drawn_in_module_order_as_from_pretrained_draws_them(tmp_path) -> None:
    """DistilBERT's classifier from a base checkpoint has two new modules, `pre_classifier` then
    `classifier`: alphabetical order would draw them the other way round."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DistilBertConfig, DistilBertModel

    from adarank.config import ModelConfig
    from adarank.io.assets import default_model_path
    from adarank.io.rows import open_rows
    from adarank.io.sharded import _skeleton_by_rows

    folder = tmp_path / "distilbert"
    torch.manual_seed(1)
    DistilBertModel(DistilBertConfig(vocab_size=200, dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(
        folder
    )
    AutoTokenizer.from_pretrained(default_model_path()).save_pretrained(folder)
    plan = _plan(folder, generation=False)
    assert plan["new_modules"] == ["pre_classifier", "classifier"] and plan["keys"], plan["why"]
    torch.manual_seed(0)
    ours = _skeleton_by_rows(ModelConfig(name_or_path=str(folder)), False, plan, open_rows(folder))
    torch.manual_seed(0)
    theirs = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)
    mine = dict(ours.named_parameters())
    for name, param in theirs.named_parameters():
        if name.startswith(("pre_classifier.", "classifier.")):
            assert torch.equal(mine[name], param), name
        else:
            assert mine[name].is_meta and mine[name].adarank_key in plan["keys"].values()


def test_what_only_from_pretrained_handles_goes_to_process_0s_route(tmp_path) -> None:
    """A head stored with another number of labels (from_pretrained refuses it, or resizes it when told)
    is not read by rows: the plan says why, and the load takes process 0's route."""
    folder = tmp_path / "bert"
    save_tiny_model(folder, llama=False)  # a classifier checkpoint: its head has 2 labels
    plan = _plan(folder, generation=False, num_labels=3)
    assert plan["keys"] is None and plan["why"] == "`classifier.weight` is [2, 32] in the checkpoint, [3, 32] here"
    assert _plan(folder, generation=False, num_labels=2)["keys"], "the same labels: read by rows"


def test_reads_outside_a_tensor_or_of_an_unknown_dtype_and_bad_indexes_are_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2, 3), "f8": torch.zeros(4, dtype=torch.float8_e4m3fn)}, tmp_path / "model.safetensors")
    rows = open_rows(tmp_path)
    with pytest.raises(OSError, match=r"cannot read rows 0:3 of `w` \(\[2, 3\], F32\)"):
        rows.read_rows("w", 0, 3)
    with pytest.raises(OSError, match=r"cannot read rows 0:1 of `f8` \(\[4\], F8_E4M3\)"):
        rows.read_rows("f8", 0, 1)
    assert rows.reads == []
    (tmp_path / INDEX).write_text("{not json")
    with pytest.raises(OSError, match="not a safetensors index"):
        open_rows(tmp_path)
