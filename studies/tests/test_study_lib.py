"""studies/study_lib.sh, the archive shared by the study scripts: what a resumed study relies on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bash(script: str, cwd: Path) -> None:
    subprocess.run(["bash", "-c", f"set -euo pipefail; source {ROOT / 'studies/study_lib.sh'}; {script}"],
                   cwd=cwd, check=True)  # fmt: skip


def _run(folder: Path, finished: bool = True) -> None:
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter.safetensors").write_bytes(b"weights")
    (folder / "sweep.json").write_text(json.dumps({"seed": 0}))
    (folder / "report.html").write_text("not archived")
    if finished:
        (folder / "metrics.json").write_text(json.dumps({"test_accuracy": 0.8}))
        (folder / "allocation.json").write_text("{}")
        (folder / "train_log.json").write_text("[]")


def test_archive_twice_restore_and_skip_unfinished(tmp_path: Path) -> None:
    out, archive = tmp_path / "runs", tmp_path / "reports"
    _run(out / "adalora" / "cfg" / "budget" / "seed0")
    _run(out / "lora" / "cfg" / "seed1")  # another depth (studies/study_rt.sh's layout)
    _run(out / "adalora" / "cfg" / "budget" / "seed2", finished=False)
    _bash(f"archive_runs {out} {archive} adapters; archive_runs {out} {archive} adapters", tmp_path)
    files = sorted(str(p.relative_to(archive)) for p in archive.rglob("*") if p.is_file())
    assert files == [
        "adalora/cfg/budget/seed0/adapter/adapter.safetensors",  # once: a second archive replaces, never nests
        "adalora/cfg/budget/seed0/allocation.json",
        "adalora/cfg/budget/seed0/metrics.json",
        "adalora/cfg/budget/seed0/sweep.json",
        "adalora/cfg/budget/seed0/train_log.json",
        "lora/cfg/seed1/adapter/adapter.safetensors",
        "lora/cfg/seed1/allocation.json",
        "lora/cfg/seed1/metrics.json",
        "lora/cfg/seed1/sweep.json",
        "lora/cfg/seed1/train_log.json",
    ]
    _bash(f"archive_runs {out} {tmp_path / 'small'}", tmp_path)  # without "adapters": the JSON files only
    assert not list((tmp_path / "small").rglob("adapter"))
    fresh = tmp_path / "fresh"
    _bash(f"restore_runs {fresh} {archive}", tmp_path)
    assert (fresh / "lora" / "cfg" / "seed1" / "metrics.json").read_text() == '{"test_accuracy": 0.8}'
    (fresh / "lora" / "cfg" / "seed1" / "metrics.json").write_text("newer")
    _bash(f"restore_runs {fresh} {archive}", tmp_path)
    assert (fresh / "lora" / "cfg" / "seed1" / "metrics.json").read_text() == "newer", "restore never overwrites"


def _study_arms(script: str) -> dict[str, tuple[str, list[str]]]:
    """Each `METHOD/FRACTION` of a study script's BUDGET table: (its config, its overrides), read by bash
    from the script itself (the configs' variables, the BUDGET and CONFIG tables)."""
    tables = (
        f"eval \"$(grep -E '^(ADA|LORA)=' {script})\"; "
        f"eval \"$(sed -n '/^declare -A BUDGET=(/,/^)/p; /^declare -A CONFIG=/p' {script})\"; "
        'for k in "${!BUDGET[@]}"; do printf "%s\\t%s\\t%s\\n" "$k" "${CONFIG[${k%/*}]}" "${BUDGET[$k]}"; done'
    )
    out = subprocess.run(["bash", "-c", tables], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    arms = {}
    for line in out.splitlines():
        key, config, overrides = line.split("\t")
        arms[key] = (config.rpartition(":")[2], overrides.split())
    return arms


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,model_params,arms",
    [("studies/study_budget.sh", 305_280, 12), ("studies/study_minilm_curve.sh", 41_472, 11)],
    ids=["smollm2", "minilm"],
)
def test_every_study_arm_is_a_valid_config_at_or_under_its_budget(script: str, model_params: int, arms: int) -> None:
    """Every arm of a curve study loads as `adarank train` would read it (a regex with brackets inside
    [...] once broke YAML's flow list and failed three runs) and matches modules of the model; AdaLoRA's
    target is exactly 1/FRACTION of LoRA r=1 on every adapted module (`model_params`), and a hand-picked
    LoRA arm never gets more than that, nor less than half."""
    from adarank.checks import load_config
    from adarank.core.budget import parse_param_budget
    from adarank.core.inject import module_shapes
    from adarank.io.models import model_skeleton

    table = _study_arms(script)
    assert len(table) == arms
    skeleton = None
    for key, (config, overrides) in sorted(table.items()):
        method, fraction = key.split("/")
        cfg = load_config(ROOT / config, [*overrides, "train.learning_rate=5e-4"])
        if skeleton is None:
            skeleton = model_skeleton(cfg.model, cfg.data.format != "classification", 2)
        if method == "head-only":
            assert cfg.adapter.target_modules == [] and fraction == "0"
            continue
        shapes = module_shapes(skeleton, cfg.adapter.target_modules)
        assert shapes, key
        budget = model_params // int(fraction)
        if method == "adalora":
            assert parse_param_budget(cfg.budget.target_params) == budget and len(shapes) in (210, 36), key
        elif method in ("lora", "peft-adalora"):
            assert cfg.budget.target_rank * sum(o + i for o, i in shapes.values()) == model_params, key
        else:
            params = cfg.budget.target_rank * sum(o + i for o, i in shapes.values())
            assert budget / 2 <= params <= budget, (key, params, budget)


def test_workers_side_by_side_never_run_the_same_point(tmp_path: Path) -> None:
    """Two workers of one study: a point another process holds is skipped (said, status 0), a free one
    runs under its claim with the command's status, and wait_for_claims returns only once the holder ends."""
    script = f"""
        source {ROOT / "studies/study_lib.sh"}
        mkdir -p claims
        flock claims/p.lock bash -c 'touch held; sleep 1.5; touch released' &
        until [ -e held ]; do sleep 0.05; done
        claimed claims p touch ran-p
        claimed claims q touch ran-q
        status=0; claimed claims r false || status=$?
        echo "status $status"
        wait_for_claims claims
        [ -e released ] && echo "waited"
    """
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True, capture_output=True, text=True)
    assert result.stdout.splitlines() == ["p: another worker is on it", "status 1", "waited"]
    assert not (tmp_path / "ran-p").exists() and (tmp_path / "ran-q").exists()
    assert sorted(p.name for p in (tmp_path / "claims").iterdir()) == ["p.lock", "q.lock", "r.lock"]


@pytest.mark.parametrize("code", [0, 3])
def test_sweep_point_passes_its_point_and_archives_even_after_a_failure(tmp_path: Path, code: int) -> None:
    """sweep_point hands sweep.py one method, seed and budget (the overrides one argument, --set's split),
    archives what finished, and reports the run's failure."""
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "sweep.py").write_text(
        f"import json, pathlib, sys\npathlib.Path('argv.json').write_text(json.dumps(sys.argv[1:]))\nsys.exit({code})\n"
    )
    _run(tmp_path / "runs" / "m3" / "cfg" / "budget" / "seed0")
    _bash("status=0; sweep_point runs reports runs/m3 cfg.yaml 1 'budget.x=1 train.learning_rate=1e-3' a=1 b=2 "
          "|| status=$?; echo $status > status", tmp_path)  # fmt: skip
    assert json.loads((tmp_path / "argv.json").read_text()) == [
        "--out", "runs/m3", "--methods", "cfg.yaml", "--seeds", "1", "--budgets", "budget.x=1 train.learning_rate=1e-3",
        "--set", "a=1", "b=2",
    ]  # fmt: skip
    assert (tmp_path / "status").read_text().strip() == str(min(code, 1))
    assert (tmp_path / "reports" / "m3" / "cfg" / "budget" / "seed0" / "metrics.json").is_file()
