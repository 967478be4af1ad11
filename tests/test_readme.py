"""The README is tested: its Python blocks run (with a few steps), its example outputs are what the
commands print, its key table is the schema's, and its figures are the reports'."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from adarank.cli import main
from adarank.config import key_table

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)]

# Blocks that cannot run here in seconds, each with the reason; a block neither run nor listed fails.
SKIPPED = {
    "# 1. install, then run the main job": "installs the package and trains for minutes; CI runs the test command",
    "torchrun --standalone": "multi-process and multi-node launches; tests/training/test_engine.py runs 2-process ones",
    "make lint": "the development commands; CI runs `make test` itself",
    "# prompt / response pairs": "needs the user's qa.jsonl and chats.jsonl; tests/data/test_chat.py trains both kinds "
    "end to end through the CLI",
    "adarank intrinsic-dim studies/configs/": "every grid point is a training run (an hour here); "
    "tests/analysis/test_intrinsic.py runs the command on a tiny model with a new head",
    "$ adarank inspect runs/default": "needs the default run's directory; "
    "test_inspect_example_is_the_default_run checks its numbers against reports/default_run.md",
}
PLAN_EXAMPLE = "$ adarank plan configs/bbc-minilm-adalora.yaml"
OWN_DATA = "$ python examples/example_data.py my-data"

# The Python blocks run with a few steps on a slice of the data. Each substitution must match exactly
# once, so a README edit that moves them fails here instead of running 400 steps.
SUBSTITUTIONS = {
    'load_splits("rotten_tomatoes")["train"]': '[part[:96] for part in load_splits("rotten_tomatoes")["train"]]',
    "max_steps=400": "max_steps=3",
    "T = 400 ": "T = 3 ",
}


def _classify(block: str) -> str:
    first = block.splitlines()[0]
    return next((key for key in [*SKIPPED, PLAN_EXAMPLE, OWN_DATA] if first.startswith(key)), "")


def test_every_block_is_run_or_skipped_for_a_stated_reason() -> None:
    python = [code for lang, code in BLOCKS if lang == "python"]
    others = [code for lang, code in BLOCKS if lang != "python"]
    assert len(python) == 2
    unclassified = [code.splitlines()[0] for code in others if not _classify(code)]
    assert not unclassified, f"README blocks neither run nor listed in SKIPPED with a reason: {unclassified}"


@pytest.mark.slow
def test_python_blocks_run(tmp_path: Path) -> None:
    """The Trainer block, then the plain-loop block that continues it, as a user would paste them."""
    source = "\n".join(code for lang, code in BLOCKS if lang == "python")
    for old, new in SUBSTITUTIONS.items():
        assert source.count(old) == 1, f"`{old}` should occur once in the README's Python blocks"
        source = source.replace(old, new)
    namespace: dict = {}
    exec(compile(source, "README.md", "exec"), namespace)
    allocator, budget = namespace["allocator"], namespace["budget"]
    assert sum(allocator.ranks().values()) == budget.target_rank * len(allocator.ranks()) == 8 * 24
    for folder in ("out/adapter", "out/loop-adapter"):
        meta = json.loads((Path(folder) / "adarank_adapter.json").read_text())
        assert meta["trained_parameters"] == ["classifier.bias", "classifier.weight"], folder
        assert sum(meta["ranks"].values()) == 192


def test_plan_example_is_what_the_command_prints(capsys: pytest.CaptureFixture[str]) -> None:
    block = next(code for _, code in BLOCKS if code.startswith(PLAN_EXAMPLE))
    assert main(["plan", str(ROOT / "configs" / "bbc-minilm-adalora.yaml")]) == 0
    assert capsys.readouterr().out.strip() == block.split("\n", 1)[1].strip()


def _number_rows(lines: list[str]) -> list[list[int]]:
    return [[int(n) for n in re.findall(r"\d+", line)] for line in lines]


def test_inspect_example_is_the_default_run() -> None:
    """The README's terminal table has the numbers of reports/default_run.md's Markdown table."""
    block = next(code for _, code in BLOCKS if code.startswith("$ adarank inspect"))
    shown = [line for line in block.splitlines()[2:] if re.match(r"\s+(\d|sum)", line)]
    report = (ROOT / "reports" / "default_run.md").read_text()
    rows = [line for line in report.splitlines() if re.match(r"\| (\d+|sum) \|", line)]
    assert len(shown) == len(rows) == 7
    assert _number_rows(shown) == _number_rows(rows)


def test_key_table_is_the_schema() -> None:
    listed = README.split("<!-- config-keys:start -->\n", 1)[1].split("\n<!-- config-keys:end -->", 1)[0]
    assert listed.strip() == key_table(), (
        "the README's config-key table differs from adarank/config.py: paste the output of "
        "`python -c 'from adarank.config import key_table; print(key_table())'` between its markers"
    )
    for key in ("adapter.dropout", "adapter.modules_to_save", "train.warmup_ratio", "train.weight_decay",
                "train.eval_batch_size", "wandb.project"):  # fmt: skip
        assert f"| `{key}` |" in listed


# (figure as the README writes it, report that holds it)
FIGURES = [
    ("79.84%", "engine.md"),
    ("80.37%", "engine.md"),
    ("79.53%", "engine.md"),
    ("79.61%", "engine.md"),
    ("81.37%", "engine.md"),
    ("16.3%", "smollm2_rt.md"),
    ("82.7%", "smollm2_rt.md"),
    ("44.47", "bbc_smollm2_lm.md"),
    ("42.14", "bbc_smollm2_lm.md"),
    ("652 s", "bbc_smollm2_lm.md"),
    ("0.874", "planted_rank.md"),
    ("0.923", "planted_rank.md"),
    ("0.700", "planted_rank.md"),
    ("0.257", "planted_rank.md"),
    ("0.029", "planted_rank.md"),
    ("0.008", "planted_rank.md"),
    ("0.228", "planted_rank.md"),
    ("4.6x", "planted_rank.md"),
    ("14.83%", "budget_curves.md"),
    ("80.44", "allocator.md"),
    ("85.17", "allocator.md"),
    ("84.78", "allocator.md"),
    ("83.67", "allocator.md"),
    ("3.222", "allocator.md"),  # allocator.md: LoRA - AdaLoRA, -3.222 [-5.347, -1.097]; the README: AdaLoRA ahead
    ("+1.172, +2.828", "allocator.md"),
    ("+1.333 [-0.160, +2.826]", "allocator.md"),
    ("1.000", "allocator.md"),
    ("0.900", "allocator.md"),
    ("72.56 ± 12.01", "allocator.md"),
    ("83.44 ± 1.11", "allocator.md"),
    ("135.0", "allocator.md"),
    ("80.40", "allocator.md"),
    ("77.11", "allocator.md"),
    ("60.56", "allocator.md"),
    ("82.57", "allocator.md"),
    ("81.45", "allocator.md"),
    ("83.45", "allocator.md"),
    ("60.11", "allocator.md"),
    ("-25.056 [-35.615, -14.496]", "allocator.md"),
    ("68.50", "allocator.md"),
    ("0.700", "allocator.md"),
    ("1346.3", "allocator.md"),
    ("74.61", "allocator.md"),
    ("84.00", "allocator.md"),
    ("-9.389", "allocator.md"),
    ("all 60 runs", "README.md"),
    ("78.33", "budget_curves.md"),
    ("82.44", "budget_curves.md"),
    ("79.33", "budget_curves.md"),
    ("69.28 ± 12.33", "budget_curves.md"),
    ("82.61", "budget_curves.md"),
    ("81.94", "budget_curves.md"),
    ("68.78 ± 13.54", "budget_curves.md"),
    ("84.11", "budget_curves.md"),
    ("79.78", "budget_curves.md"),
    ("74.50", "budget_curves.md"),
    ("84.28", "budget_curves.md"),
    ("84.67", "budget_curves.md"),
    ("355,218", "budget_curves.md"),
    ("84.11 ± 1.62", "budget_curves.md"),
    ("80.50", "budget_curves.md"),
    ("81.61", "budget_curves.md"),
    ("-3.611 [-10.715, +3.493]", "budget_curves.md"),
    ("-2.500", "budget_curves.md"),
    ("80.94", "budget_curves.md"),
    ("77.28", "budget_curves.md"),
    ("78.11", "budget_curves.md"),
    ("414.5", "budget_curves.md"),
    ("7.5e-9", "cost.md"),
    ("93 of 600", "eval_cost.md"),
    ("0.54x", "eval_cost.md"),
    ("84.5%", "eval_cost.md"),
    ("0.82x", "train_step_cost.md"),
    ("37.0%", "rt_chat.md"),
    ("0.027", "understand.md"),
    ("0.186", "understand.md"),
    ("+0.37", "understand.md"),
    ("p = 0.079", "understand.md"),
    ("+0.41", "understand.md"),
    ("p = 0.045", "understand.md"),
    ("10,616,832", "understand.md"),
    ("0.6112", "understand.md"),
    ("0.8096", "understand.md"),
    ("0.7898", "understand.md"),
    ("0.7843", "understand.md"),
    ("0.8157", "understand.md"),
    ("20,864", "understand.md"),
    ("0.8032", "understand.md"),
    ("4,614", "minilm_curves.md"),
    ("78.40", "minilm_curves.md"),
    ("78.17", "minilm_curves.md"),
    ("78.14", "minilm_curves.md"),
    ("63.87", "minilm_curves.md"),
    ("75.72", "minilm_curves.md"),
    ("73.29", "minilm_curves.md"),
    ("+2.425", "minilm_curves.md"),
    ("78.82", "minilm_curves.md"),
    ("79.84", "minilm_curves.md"),
    ("79.36", "minilm_curves.md"),
    ("+1.015", "minilm_curves.md"),
    ("+0.536", "minilm_curves.md"),
    ("81.11", "minilm_curves.md"),
    ("79.19", "minilm_curves.md"),
    ("-1.918", "minilm_curves.md"),
    ("all 33 runs", "README.md"),
    ("84.3%", "rt_chat.md"),
]


@pytest.mark.parametrize(("figure", "report"), FIGURES)
def test_readme_figures_come_from_reports(figure: str, report: str) -> None:
    assert figure in README
    assert figure in (ROOT / "reports" / report).read_text()


def _commands(block: str) -> list[list[str]]:
    """The `$ ...` commands of a shell block, continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line[2:].split("  #")[0]) for line in joined.splitlines() if line.startswith("$ ")]


def test_own_data_commands_run(tmp_path: Path) -> None:
    """The "Your own data" block as a user runs it: the example files, then one run per format, each
    with 2 steps on a slice (and a tiny Llama standing in for SmolLM2, whose weights CI has too, but
    whose steps take seconds each)."""
    from conftest import save_tiny_model

    block = next(code for _, code in BLOCKS if code.startswith(OWN_DATA))
    commands = _commands(block)
    assert [c[0] for c in commands] == ["python", "adarank", "adarank", "adarank"]
    subprocess.run([sys.executable, str(ROOT / commands[0][1]), *commands[0][2:]], check=True)
    save_tiny_model(tmp_path / "llama", llama=True)
    quick = ["train.max_steps=2", "train.batch_size=4", "data.max_train_samples=16", "data.max_eval_samples=8",
             "wandb.mode=disabled"]  # fmt: skip
    expected = {"my-reviews": "test_macro_f1", "my-topics": "test_answer_loss", "my-articles": "test_perplexity"}
    for command in commands[1:]:
        args = [
            a.replace("model.name_or_path=smollm2", f"model.name_or_path={tmp_path / 'llama'}") for a in command[1:]
        ]
        assert main([*args, *quick]) == 0, command
    for run, key in expected.items():
        assert key in json.loads((Path("runs") / run / "metrics.json").read_text())
