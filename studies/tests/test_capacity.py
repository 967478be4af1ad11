"""The capacity study's tools (issue 39): the invented facts and the pilot's report, whose figures must
be the archived runs' (studies/runs/capacity/pilot/)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "studies"))
import capacity_report  # noqa: E402
import facts  # noqa: E402

PILOT = ROOT / "studies" / "runs" / "capacity" / "pilot"


def test_a_draw_is_fixed_by_its_seed_and_its_names_and_places_are_distinct() -> None:
    first, again, other = facts.draw(300, seed=1), facts.draw(300, seed=1), facts.draw(300, seed=0)
    assert first == again
    assert len({r["name"] for r in first}) == 300 and len({r["response"] for r in first}) == 300
    assert {r["response"] for r in first}.isdisjoint({r["response"] for r in other}) or first != other
    assert first[0]["prompt"] == f"Q: Where was {first[0]['name']} born?\nA:"
    with pytest.raises(ValueError, match="facts must be >= 1"):
        facts.draw(0, seed=1)


def test_the_facts_folder_holds_the_same_facts_in_every_split(tmp_path: Path) -> None:
    from datasets import load_from_disk

    rows = facts.draw(5, seed=3)
    facts.write(rows, tmp_path / "f")
    saved = load_from_disk(str(tmp_path / "f"))
    assert sorted(saved) == ["test", "train", "validation"]
    for split in saved.values():
        assert split["response"] == [r["response"] for r in rows]
    assert [json.loads(line) for line in (tmp_path / "f" / "facts.jsonl").read_text().splitlines()] == rows
    assert facts.main(["--facts", "2", "--seed", "0", "--out", str(tmp_path / "f")]) == 2  # not empty: refused


def _metric(task: str, params: int, lr: str, seed: int, key: str) -> float:
    found = [
        json.loads(m.read_text())[key]
        for m in PILOT.glob(f"{task}/*/*/seed{seed}/metrics.json")
        if json.loads(m.read_text())["adapter_params_final"] == params and capacity_report._lr(m.parent) == lr
    ]
    assert len(found) == 1, (task, params, lr, seed)
    return float(found[0])


def test_the_pilot_reports_figures_are_its_archived_runs() -> None:
    report = (ROOT / "reports" / "capacity_pilot.md").read_text()
    loss = {p: _metric("facts", p, "8e-3", 0, "validation_answer_loss") for p in (4614, 38440, 305490)}
    spread = abs(_metric("facts", 38440, "8e-3", 1, "validation_answer_loss") - loss[38440])
    ppl = {p: _metric("bbc", p, "1e-3", 0, "validation_perplexity") for p in (4614, 38440, 305490)}
    ppl_spread = abs(_metric("bbc", 38440, "1e-3", 1, "validation_perplexity") - ppl[38440])
    stated = [
        f"{spread:.3f}", f"{loss[4614] - loss[38440]:.3f}", f"{loss[38440] - loss[305490]:.3f}",
        f"{ppl_spread:.2f}", f"{ppl[4614] - ppl[38440]:.2f}", f"{ppl[38440] - ppl[305490]:.2f}",
        f"{100 * _metric('facts', 305490, '8e-3', 0, 'validation_accuracy'):.0f}%",
        f"{_metric('bbc', 305490, '1e-3', 0, 'validation_perplexity_before'):.2f}",
    ]  # fmt: skip
    for figure in stated:
        assert figure in report, figure
    assert capacity_report.pilot(PILOT.parent) in report  # the runs table is the script's, unedited


def test_the_small_versions_table_is_its_archived_runs() -> None:
    report = (ROOT / "reports" / "capacity_pilot.md").read_text()
    assert capacity_report.small(PILOT.parent) in report


def test_the_grids_table_is_its_archived_runs() -> None:
    report = (ROOT / "reports" / "capacity_pilot.md").read_text()
    assert capacity_report.grid(PILOT.parent) in report  # the lr grid's table is the script's, unedited
    for figure in ("1.013", "2.730", "3.348", "0.158"):
        assert f"**{figure}**" in report, figure
    assert capacity_report.best_lr(PILOT.parent, "adalora-8") == "8e-3"
    assert capacity_report.next_lr(PILOT.parent, "adalora-8") is None


def test_the_seeds_table_pairs_each_arm_with_adarank_and_the_best_alternative_by_seed(tmp_path: Path) -> None:
    losses = {"adalora-8": [1.0, 1.2, 1.1], "vo_top-8": [3.0, 3.1, 3.3], "down18-8": [2.0, 2.5, 2.2]}
    for name, values in losses.items():
        for seed, loss in enumerate(values):
            run = tmp_path / "seeds" / "facts" / name / "method" / "point" / f"seed{seed}"
            run.mkdir(parents=True)
            metrics = {"validation_answer_loss": loss, "validation_accuracy": 0.5, "adapter_params_final": 38000,
                       "train_seconds": 100.0}  # fmt: skip
            (run / "metrics.json").write_text(json.dumps(metrics))
            (run / "sweep.json").write_text(json.dumps({"commit": "abc1234"}))
    rows = {line.split(" | ")[1]: line for line in capacity_report.seeds(tmp_path).splitlines() if "1/8" in line}
    # adarank minus down18, the best alternative: -1.0, -1.3, -1.1 -> mean -1.133, t(2) 4.303 x sd 0.1528 / sqrt 3
    assert rows["adarank AdaLoRA"].split(" | ")[7] == "-1.133 [-1.513, -0.754] *"
    assert rows["adarank AdaLoRA"].split(" | ")[4:6] == ["1.100 ± 0.100", "50.0 ± 0.0"]
    best = rows["LoRA r=1 on down_proj, top 18 layers (best alternative)"].split(" | ")
    assert best[6] == "+1.133 [+0.754, +1.513] *" and best[7] == ""
    assert (
        rows["LoRA r=1 on v_proj + o_proj, top 20 layers"].split(" | ")[7] == "+0.900 [+0.243, +1.557] *"
    )  # 1.0, 0.6, 1.1
    assert rows["allocate-then-train"].split(" | ")[2:5] == ["0", "-", "not yet run"]


def _seed_run(root: Path, name: str, seed: int, loss: float, seconds: float) -> None:
    run = root / "seeds" / "facts" / name / "method" / "point" / f"seed{seed}"
    run.mkdir(parents=True)
    metrics = {"validation_answer_loss": loss, "validation_accuracy": 0.0, "adapter_params_final": 4000,
               "train_seconds": seconds}  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "sweep.json").write_text(json.dumps({"commit": "abc1234"}))


def _rows(root: Path, budget: str) -> dict[str, list[str]]:
    """The seeds table's rows at one budget, by arm, split into cells."""
    lines = [line.split(" | ") for line in capacity_report.seeds(root).splitlines() if line.startswith(f"| {budget}")]
    return {cells[1]: cells for cells in lines}


def test_allocate_then_trains_cost_adds_its_search(tmp_path: Path) -> None:
    for seed in (0, 1):
        _seed_run(tmp_path, "adalora-64", seed, 4.0 + seed, 100.0)
        _seed_run(tmp_path, "att-64", seed, 5.0, 200.0 + seed)
    rows = _rows(tmp_path, "1/64")
    att = "allocate-then-train (best alternative)"  # the only other arm with runs at 1/64
    assert rows[att][8] == "200 + search not archived"  # a search missing is said, not counted as 0
    _seed_run(tmp_path, "search-64", 0, 9.0, 40.0)
    _seed_run(tmp_path, "search-64", 1, 9.0, 60.0)
    rows = _rows(tmp_path, "1/64")
    assert rows[att][8] == "200 + 50 search"  # the means; 200.5 rounds to 200
    assert rows["adarank AdaLoRA"][8] == "100"


def test_the_facts_reports_table_is_its_archived_runs() -> None:
    report = (ROOT / "reports" / "capacity_facts.md").read_text()
    table = report.split("<!-- seeds:start -->\n")[1].split("\n<!-- seeds:end -->")[0]
    assert table == capacity_report.seeds(PILOT.parent)  # the script's table, unedited, from the archive


def test_a_heatmaps_grid_fills_the_modules_no_seed_lists_in_a_blocks_order() -> None:
    # PEFT's EVA and allocate-then-train list only the modules they kept: layer 1 and k_proj are rank 0, not gone
    seed0 = {"model.layers.2.mlp.down_proj": 1, "model.layers.0.self_attn.v_proj": 2}
    seed1 = {"model.layers.0.self_attn.q_proj": 1}
    assert capacity_report._grid([seed0, seed1]) == [
        f"model.layers.{layer}.{kind}" for layer in (0, 1, 2)
        for kind in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
    ]  # fmt: skip
