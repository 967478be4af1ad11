"""Allocate-then-train (adapter.ranks_from): a run trains, fixed and from a fresh start, the per-module
ranks an earlier run found; a file that does not fit the run is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model

from adarank.checks import load_config
from adarank.cli import main
from adarank.core.inject import find_adapters
from adarank.training.setup import prepare

SEARCH = [
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


def _found(tmp_path: Path) -> dict[str, int]:
    """A pattern of ranks as a search run leaves it: every module of the tiny Llama, some at 0."""
    save_tiny_model(tmp_path / "llama", llama=True)
    cfg = load_config(None, [f"model.name_or_path={tmp_path / 'llama'}", *SEARCH])
    _, model, _ = prepare(cfg)
    names = list(find_adapters(model))
    return {name: (0, 1, 2, 3)[i % 4] for i, name in enumerate(names)}


def test_the_found_ranks_are_the_first_triplets_of_the_usual_draw(tmp_path: Path) -> None:
    ranks = _found(tmp_path)
    (tmp_path / "allocation.json").write_text(json.dumps(ranks))
    base = [f"model.name_or_path={tmp_path / 'llama'}", *SEARCH]
    _, full, _ = prepare(load_config(None, base))
    _, cut, allocator = prepare(load_config(None, [*base, f"adapter.ranks_from={tmp_path / 'allocation.json'}"]))
    drawn, kept = find_adapters(full), find_adapters(cut)
    assert {n: a.rank for n, a in kept.items()} == {n: r for n, r in ranks.items() if r}
    for name, adapter in kept.items():
        r = ranks[name]
        assert torch.equal(adapter.left_vectors, drawn[name].left_vectors[:, :r])
        assert torch.equal(adapter.right_vectors, drawn[name].right_vectors[:r])
        assert torch.equal(adapter.singular_values, torch.zeros(r)), "lambda starts at 0: the base is unchanged"
        assert adapter.scaling == drawn[name].scaling == 16.0 / 3, "alpha / init_rank, as in the search run"
    plan = allocator.set_total_steps(12)
    assert (plan.adapts, plan.initial_budget, plan.target_budget) == (False, sum(ranks.values()), sum(ranks.values()))


@pytest.mark.slow
def test_search_then_train_the_found_ranks(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "llama", llama=True)
    model = f"model.name_or_path={tmp_path / 'llama'}"
    search, fresh = tmp_path / "search", tmp_path / "fresh"
    assert main(["train", f"output_dir={search}", model, *SEARCH]) == 0
    found = json.loads((search / "allocation.json").read_text())
    assert 0 in found.values(), "the search pruned some module to rank 0 (the hard case: it is left plain)"
    assert main(["train", f"output_dir={fresh}", model, *SEARCH, f"adapter.ranks_from={search}"]) == 0
    trained = json.loads((fresh / "allocation.json").read_text())
    assert trained == {n: r for n, r in found.items() if r}, "the fresh run keeps the found ranks to the end"
    before, after = (json.loads((d / "metrics.json").read_text()) for d in (search, fresh))
    assert after["adapter_params_final"] == before["adapter_params_final"]
    assert after["trainable_params_initial"] == after["trainable_params_final"], "no triplet pruned in training"
    assert after["total_rank_final"] == after["target_total_rank"] == sum(found.values())
    exported = json.loads((fresh / "adapter" / "adarank_adapter.json").read_text())
    assert exported["ranks"] == found, "the export records the found ranks, the modules left plain at 0"


def test_a_file_that_does_not_fit_is_refused_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ranks = _found(tmp_path)
    first = next(iter(ranks))
    bad = {**{n: r for n, r in ranks.items() if n != first}, "model.layers.9.mlp.up_proj": 1}
    bad[next(iter(bad))] = 5
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    model, out = f"model.name_or_path={tmp_path / 'llama'}", tmp_path / "run"
    assert main(["train", f"output_dir={out}", model, *SEARCH, f"adapter.ranks_from={tmp_path / 'bad.json'}"]) == 2
    err = capsys.readouterr().err
    assert f"has no rank for 1 targeted module(s) (e.g. {first})" in err
    assert "ranks 1 module(s) this run does not target (e.g. model.layers.9.mlp.up_proj)" in err
    assert f"rank(s) above budget.init_rank (3): {next(iter(bad))}: 5" in err
    assert not out.exists()
    (tmp_path / "text.json").write_text('{"a": 1.5}')
    for given, says in [
        (tmp_path / "none", "no such file; give a finished run's directory or its allocation.json"),
        (tmp_path / "text.json", "ranks must be whole numbers >= 0, got a: 1.5"),
    ]:
        assert main(["train", f"output_dir={out}", model, *SEARCH, f"adapter.ranks_from={given}"]) == 2
        assert says in capsys.readouterr().err
        assert not out.exists()
