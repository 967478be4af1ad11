"""Dashboards: what a real (tiny) run logged to offline wandb, read back from the run file; the
report without wandb; `adarank inspect`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_tiny_model
from wandb_offline import history, run_file, run_name, summary

from adarank.cli import main
from adarank.reporting.dashboards import heatmap_rows
from adarank.reporting.report import rank_grid, rank_table

ROOT = Path(__file__).resolve().parents[2]
RANKS = {
    "bert.encoder.layer.0.attention.self.query": 3,
    "bert.encoder.layer.0.output.dense": 0,
    "bert.encoder.layer.1.attention.self.query": 5,
    "bert.encoder.layer.1.output.dense": 2,
    "classifier": 1,
}


def test_rank_grid_and_table() -> None:
    grid = rank_grid(RANKS)
    assert grid.layers == [0, 1] and grid.types == ["attention.self.query", "output.dense"]
    assert grid.cells == [[3, 0], [5, 2]] and grid.other == {"classifier": 1}
    assert rank_table(RANKS).splitlines() == [
        "     layer  attention.self.query  output.dense  sum",
        "         0                     3             0    3",
        "         1                     5             2    7",
        "       sum                     8             2   10",
        "classifier                                        1",
    ]
    assert heatmap_rows(RANKS) == [[0, "attention.self.query", 3], [0, "output.dense", 0],
                                   [1, "attention.self.query", 5], [1, "output.dense", 2]]  # fmt: skip


def test_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "allocation.json").write_text(json.dumps(RANKS))
    assert main(["inspect", str(tmp_path)]) == 0
    assert capsys.readouterr().out.endswith("5 adapters, total rank 11, 1 at rank 0\n")
    (tmp_path / "allocation.json").write_text("[1, 2]")
    assert main(["inspect", str(tmp_path)]) == 2
    assert "expected a JSON object of module name -> rank" in capsys.readouterr().err


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short real run with wandb offline (the default without credentials), in its own process."""
    base = tmp_path_factory.mktemp("dash")
    save_tiny_model(base / "model", llama=False)
    out = base / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_API_KEY": "", "HOME": str(base)}
    env.pop("WANDB_MODE", None)  # unset: adarank's default (offline without credentials) must apply
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        env[var] = str(base / "wandb-home")
    done = subprocess.run(
        [sys.executable, "-m", "adarank", "train", f"output_dir={out}", f"model.name_or_path={base / 'model'}",
         "adapter.target_modules=[all-linear]", "train.max_steps=12", "train.batch_size=8",
         "data.max_train_samples=96", "data.max_eval_samples=16", "budget.init_rank=3", "budget.target_rank=1",
         "budget.t_init=2", "budget.t_final=4", "budget.mask_interval=2"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out


@pytest.mark.slow
def test_logged_ranks_equal_the_allocation(offline_run: Path) -> None:
    wandb_file = run_file(offline_run)  # exactly one run: ours and transformers' share it
    assert run_name(wandb_file) == offline_run.name == "run"  # named after the run directory, as the loop's
    rows = history(wandb_file)
    allocation = json.loads((offline_run / "allocation.json").read_text())
    steps = json.loads((offline_run / "allocation_history.json").read_text())
    assert sorted(steps, key=int) == ["4", "6", "8"]  # decay 2..8 every 2, final phase from 8
    logged = {row["train/global_step"]: row for row in rows if any(k.startswith("rank/") for k in row)}
    assert sorted(logged) == [4, 6, 8]
    for step, row in logged.items():
        ranks = {k.removeprefix("rank/"): v for k, v in row.items() if k.startswith("rank/")}
        assert ranks == steps[str(step)]["ranks"]
        assert sum(ranks.values()) == row["adarank/live_rank"] == row["adarank/budget"] == steps[str(step)]["live"]
        assert row["adarank/threshold"] == pytest.approx(steps[str(step)]["threshold"])
        assert row["adarank/triplet_scores"]["_type"] == "histogram"
        assert sum(row["adarank/triplet_scores"]["values"]) == 12 * 3  # every triplet scored
    assert logged[8]["adarank/budget"] == 12 == sum(allocation.values())  # 12 adapters x target rank 1
    assert any("train/loss" in row for row in rows), "the Trainer's own logs go to the same run"
    final = next(row for row in rows if "final/rank_heatmap_table" in row)
    table_file = wandb_file.parent / "files" / final["final/rank_heatmap_table"]["path"]
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["layer", "type", "rank"]
    assert table["data"] == heatmap_rows(allocation)
    cells = {f"bert.encoder.layer.{layer}.{kind}": rank for layer, kind, rank in table["data"]}
    assert cells == allocation
    assert final["final/rank_heatmap_image"]["_type"] == "image-file"
    figures = next(row for row in rows if "report/rank_over_time" in row)  # the report's figures, as images
    assert {k for k in figures if k.startswith("report/")} == {f"report/{png[:-4]}" for png in REPORT_FIGURES}
    assert all(figures[f"report/{png[:-4]}"]["_type"] == "image-file" for png in REPORT_FIGURES)
    info = summary(wandb_file)
    assert json.loads(info["adarank/final_ranks"]) == allocation
    # tiny BERT triplets cost 32 + 32 + 1 = 65 in attention, 64 + 32 + 1 = 97 in the FFN
    cost = {name: 97 if "intermediate" in name or name.endswith("layer.0.output.dense") or
            name.endswith("layer.1.output.dense") else 65 for name in allocation}  # fmt: skip
    assert info["adarank/adapter_params_initial"] == 3 * sum(cost.values()) == 3 * 2 * (4 * 65 + 2 * 97)
    final_params = sum(rank * cost[name] for name, rank in allocation.items())
    assert info["adarank/adapter_params_final"] == final_params
    assert info["adarank/compression_ratio"] == pytest.approx(final_params / (3 * 908))


REPORT_FIGURES = ("loss_curve.png", "budget_curve.png", "rank_heatmap.png", "rank_over_time.png",
                  "score_distribution.png")  # fmt: skip


@pytest.mark.slow
def test_report_files(offline_run: Path) -> None:
    page = (offline_run / "report.html").read_text()
    assert re.findall(r'<img src="([^"]+)"', page) == list(REPORT_FIGURES)
    for png in REPORT_FIGURES:
        assert (offline_run / png).stat().st_size > 5_000
    assert "http" not in page.replace("http-equiv", ""), "the report must not need the network"
    for shown in (
        "<th>model</th>",
        "<th>data</th>",
        "rotten_tomatoes as classification: 96 train / 16 validation",
        "<th>test accuracy</th>",
        "<summary>config.yaml</summary>",
        "b(0) = 36 -&gt; b(T) = 12 triplets",
    ):
        assert shown in page, shown  # fmt: skip
    shown = page.split("<summary>config.yaml")[0]
    assert "test_accuracy" not in shown and "eval accuracy" not in shown  # readable names, no duplicate
    assert re.search(r"<th>test accuracy</th><td>\d+\.\d\d%</td>", page)  # rounded, in percent


@pytest.mark.slow
def test_live_rank_trace_and_log(offline_run: Path) -> None:
    """rank_trace.json: one point per step from 0; the live rank counts triplets with lambda * mask
    nonzero, so it is 0 at step 0 (lambda starts at 0), equals b(t) right after each masking step, and
    equals the final rank in the final phase. The same count is logged as `live_rank`."""
    trace = json.loads((offline_run / "rank_trace.json").read_text())
    events = json.loads((offline_run / "allocation_history.json").read_text())
    allocation = json.loads((offline_run / "allocation.json").read_text())
    assert [p["step"] for p in trace] == list(range(13)) and trace[0]["live_rank"] == 0
    assert trace[0]["budget"] == 36 and trace[-1]["budget"] == 12
    for step, event in events.items():
        assert trace[int(step)]["live_rank"] == event["live"] == event["budget"]
    assert all(p["live_rank"] == sum(allocation.values()) for p in trace[8:])
    logged = [e for e in json.loads((offline_run / "train_log.json").read_text()) if "live_rank" in e]
    assert logged and all(e["live_rank"] == trace[e["step"]]["live_rank"] for e in logged)


def _browser() -> str:
    """Debian's chromium; under CI=true its absence fails the test instead of skipping it."""
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and chromium is missing: the browser check must not be skipped in CI "
                        "(apt-get install chromium)")  # fmt: skip
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    return found


def _check_page(page: Path) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "check_report.py"), str(page), "--browser",
                           _browser()], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_report_renders_in_headless_chromium(offline_run: Path) -> None:
    checked = _check_page(offline_run)
    assert checked.startswith(f"{len(REPORT_FIGURES)} images") and "; 0 figure(s) without a caption" in checked


@pytest.mark.slow
def test_compare_two_runs_of_different_methods(offline_run: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """The AdaLoRA run against the same run's config as LoRA (rank 1 on the same 12 modules): a table,
    heatmaps on one colour scale, the rank difference, and a page that renders with captions. The
    LoRA run evaluates every 4 steps: its log has the validation curve the report draws."""
    lora = tmp_path / "lora"
    config = offline_run / "config.yaml"
    assert main(["train", str(config), f"output_dir={lora}", "budget.schedule=constant", "budget.init_rank=1",
                 "budget.target_rank=1", "wandb.mode=disabled", "train.eval_steps=4"]) == 0  # fmt: skip
    log = json.loads((lora / "train_log.json").read_text())
    assert [e["step"] for e in log if "eval_loss" in e] == [4, 8, 12]
    assert not any("eval_loss" in e for e in json.loads((offline_run / "train_log.json").read_text()))
    capsys.readouterr()
    assert main(["compare", str(offline_run), str(lora), "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["run", "lora"]
    assert table[4].split() == ["method", "AdaLoRA", "3", "->", "rank", "1", "LoRA", "r=1"]
    assert table[10].split() == ["total", "rank", "at", "the", "end", "12", "12"]
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert re.findall(r'<img src="([^"]+)"', page) == ["compare_rank_0.png", "compare_rank_1.png", "compare_diff_1.png"]
    allocation = json.loads((offline_run / "allocation.json").read_text())
    assert f"colour scale 0 to {max(allocation.values())}, shared" in page  # LoRA's rank 1 is never larger
    from adarank.reporting.compare import load_runs, rank_difference

    first, second = load_runs([offline_run, lora])
    assert rank_difference(second, first) == {n: 1 - r for n, r in allocation.items()}
    assert _check_page(tmp_path / "cmp" / "compare.html").startswith("3 images")


def test_compare_refuses_what_is_not_a_finished_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("seed: 0\n")
    assert main(["compare", str(tmp_path / "half"), str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "`" + str(tmp_path / "half") + "` is not a finished run directory (no metrics.json, allocation.json)" in err
    assert "`" + str(tmp_path / "nothing") + "` is not a finished run directory (no metrics.json, config.yaml" in err
    assert main(["compare", str(tmp_path / "half")]) == 2 and "at least two run directories" in capsys.readouterr().err


def test_wandb_online_without_login_falls_back_to_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from adarank.checks import load_config
    from adarank.reporting.dashboards import wandb_mode

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode(load_config(None, ["wandb.mode=online"]).wandb.mode) == "offline"
    assert "no wandb login" in capsys.readouterr().out
    assert wandb_mode(load_config(None, []).wandb.mode) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(load_config(None, []).wandb.mode) == "online"
    assert wandb_mode(load_config(None, ["wandb.mode=disabled"]).wandb.mode) == "disabled"


def test_importing_adarank_never_imports_wandb() -> None:
    code = "import sys, adarank, adarank.run, adarank.reporting.dashboards; print('wandb' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-1000:]


@pytest.mark.slow
def test_analysis_is_logged_to_the_runs_wandb_run(offline_run: Path, tmp_path: Path) -> None:
    """`adarank analyze RUN` on a run that had an (offline) wandb run logs into the same run id: a second
    offline folder with that id holds the module table (one row per module, as analysis.json) and the
    spectra image; the run's own files are untouched. With WANDB_MODE=disabled nothing is logged."""
    from adarank.reporting.dashboards import ANALYSIS_COLUMNS

    run = tmp_path / "run"
    shutil.copytree(offline_run, run)
    first = run_file(run)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_API_KEY": "", "HOME": str(tmp_path)}
    env.pop("WANDB_MODE", None)
    done = subprocess.run([sys.executable, "-m", "adarank", "analyze", str(run)], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    run_id = first.stem.removeprefix("run-")
    assert f"logged to the run's wandb run {run_id}" in done.stdout
    files = sorted(run.rglob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and {f.name for f in files} == {first.name}
    second = next(f for f in files if f != first)
    rows = history(second)
    logged = next(row for row in rows if "analysis/modules" in row)
    assert logged["analysis/spectra"]["_type"] == "image-file"
    table = json.loads((second.parent / "files" / logged["analysis/modules"]["path"]).read_text())
    analysis = json.loads((run / "analysis" / "analysis.json").read_text())
    assert table["columns"] == ANALYSIS_COLUMNS
    assert [row[0] for row in table["data"]] == list(analysis["modules"])
    assert [row[2] for row in table["data"]] == pytest.approx(
        [m["effective_rank"] for m in analysis["modules"].values()]
    )
    assert summary(second)["analysis/modules"] == len(analysis["modules"])
    env["WANDB_MODE"] = "disabled"
    again = subprocess.run([sys.executable, "-m", "adarank", "analyze", str(run), "--out", str(tmp_path / "a2")],
                           capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert again.returncode == 0 and "logged to" not in again.stdout
    assert len(sorted(run.rglob("offline-run-*/run-*.wandb"))) == 2
