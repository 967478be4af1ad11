"""`adarank plan`: the summary's numbers, the PNG, and every shipped config planned without training."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from adarank.checks import load_config
from adarank.cli import main
from adarank.reporting.plan import plan_summary, plot_budget, sparkline
from adarank.training.setup import describe

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))
# 2 layers x (q, k, v: 32x32, FFN in 64x32): attention triplets cost 65, FFN ones 97
SHAPES = {f"layer.{i}.{m}": (64, 32) if m == "ffn" else (32, 32) for i in range(2) for m in ("q", "k", "v", "ffn")}


def test_summary_in_triplets() -> None:
    cfg = load_config(
        None,
        ["budget.init_rank=4", "budget.target_rank=2", "train.max_steps=100", "budget.t_init=10", "budget.t_final=20"],
    )
    lines = plan_summary(cfg, SHAPES, base_params=100_000).splitlines()
    assert lines[0] == "adapters: 8 (layer.<i>.ffn x2, layer.<i>.k x2, layer.<i>.q x2, layer.<i>.v x2)"
    assert lines[2] == "budget b(t) in triplets: b(0)=32, b(10)=32, b(45)=18, b(80)=16, b(100)=16"
    # 8 adapters cost 3 x 65 + 97 per layer = 584 per rank; b(T) = 16 triplets = 2 per adapter on average
    assert lines[4] == (
        "adapter parameters: 2,336 at b(0) (2.34% of the base model's 100,000); about 1,168 at b(T) (1.17%)"
    )
    # a standard LoRA costs 3 x 64 + 96 = 288 per layer and rank: 1,168 / 576 = 2.03
    assert (
        lines[5]
        == "matching LoRA rank for the final budget: r = 2.03 (standard LoRA r=2 on these modules: 1,152 parameters)"
    )


def test_summary_in_parameters_warns_about_rank_zero() -> None:
    cfg = load_config(None, ["budget.init_rank=4", "budget.target_params=500", "train.max_steps=100"])
    text = plan_summary(cfg, SHAPES, base_params=100_000)
    assert "budget b(t) in params: b(0)=2,336" in text and "b(70)=500" in text
    assert "at most 500 at b(T) (0.50%)" in text
    # 500 // 65 = 7 triplets at most for 8 adapters
    assert "at most 7 triplets for 8 adapters, so at least 1 adapters will end at rank 0" in text


def test_sparkline_and_png(tmp_path: Path) -> None:
    assert sparkline([8, 8, 4, 0, 0]) == "██▅▁▁"
    cfg = load_config(None, ["train.max_steps=50"])
    _, plan = describe(cfg)
    png = plot_budget(plan, tmp_path / "plot.png")
    with Image.open(png) as image:
        assert image.size == (770, 352)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_plan_every_shipped_config(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "plan.png"
    assert main(["plan", str(path), f"output_dir={tmp_path / 'run'}", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("adapters: ") and "budget b(t) in " in out and "matching LoRA rank" in out
    assert png.stat().st_size > 10_000
    assert not (tmp_path / "run").exists(), "plan writes nothing but the plot"


def test_plan_refuses_bad_config_with_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", f"output_dir={tmp_path}", "budget.target_params=lots", "budget.mask_interval=0"])
    err = capsys.readouterr().err
    assert code == 2 and "target_params `lots`" in err and "mask_interval (0)" in err
