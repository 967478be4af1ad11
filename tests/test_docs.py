"""The README and the documentation pages are tested: every code block runs or says why it cannot, the
key table is the schema's, every figure they state is recomputed from its archived record, and the
site builds with --strict and reads offline in a browser.

A fenced block is preceded by a marker saying how it is tested:

    <!-- test: python -->          run, with the page's earlier python blocks, in a few steps
    <!-- test: output -->          the first line is `$ adarank ...`; the rest is exactly what it prints
    <!-- test: commands -->        every `$ ` line runs, training with 2 steps on a slice, a tiny model for smollm2
    <!-- test: skip: REASON -->    not run here, for the reason written there
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from adarank.cli import main
from adarank.config import key_table

ROOT = Path(__file__).parent.parent
PAGES = {"README.md": ROOT / "README.md"} | {f"docs/{p.name}": p for p in sorted((ROOT / "docs").glob("*.md"))}
BLOCK = re.compile(r"^(?:<!-- test: ([^>]*?) -->\n)?```(\w*)\n(.*?)^```", flags=re.S | re.M)
KINDS = ("python", "output", "commands", "skip")


def blocks(page: str) -> list[tuple[str, str, str]]:
    """(marker, language, code) of every fenced block of ``page``; marker "" where none precedes it."""
    text = PAGES[page].read_text()
    found = [(m.group(1) or "", m.group(2), m.group(3)) for m in BLOCK.finditer(text)]
    assert len(found) == text.count("\n```") // 2 + text.startswith("```"), f"{page}: unbalanced fences"
    return found


ALL_BLOCKS = [(page, *block) for page in PAGES for block in blocks(page)]


def test_every_block_is_run_or_skipped_for_a_stated_reason() -> None:
    unmarked = [f"{page}: {code.splitlines()[0]}" for page, marker, _, code in ALL_BLOCKS if not marker]
    assert not unmarked, f"blocks without a `<!-- test: ... -->` marker: {unmarked}"
    for page, marker, _, code in ALL_BLOCKS:
        kind, _, reason = marker.partition(":")
        assert kind in KINDS, f"{page}: unknown marker `{marker}`"
        if kind == "skip":
            assert len(reason.strip()) > 20, f"{page}: a skipped block needs its reason: {code.splitlines()[0]}"


# The python blocks run with a few steps on a slice of the data. Every substitution that a page's blocks
# need must match, so a page edit that moves them fails here instead of running 400 steps.
SUBSTITUTIONS = {
    'load_splits("rotten_tomatoes")["train"]': '[part[:96] for part in load_splits("rotten_tomatoes")["train"]]',
    "max_steps=400": "max_steps=3",
    "T = 400 ": "T = 3 ",
}
PYTHON_PAGES = sorted({page for page, marker, *_ in ALL_BLOCKS if marker == "python"})


@pytest.mark.slow
@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_python_blocks_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's python blocks in order, as a user pastes them; the adapters then hold the final budget."""
    monkeypatch.chdir(tmp_path)
    source = "\n".join(code for marker, lang, code in blocks(page) if marker == "python")
    for old, new in SUBSTITUTIONS.items():
        source = source.replace(old, new)
    assert "400" not in source, f"{page}: a python block trains for 400 steps; add its form to SUBSTITUTIONS"
    namespace: dict = {}
    exec(compile(source, page, "exec"), namespace)
    allocator, budget = namespace["allocator"], namespace["budget"]
    assert sum(allocator.ranks().values()) == budget.target_rank * len(allocator.ranks()) == 8 * 24
    exported = sorted(p.parent.name for p in tmp_path.rglob("adarank_adapter.json"))
    assert exported, f"{page}: the blocks export no adapter"
    for meta_file in tmp_path.rglob("adarank_adapter.json"):
        meta = json.loads(meta_file.read_text())
        assert meta["trained_parameters"] == ["classifier.bias", "classifier.weight"], meta_file
        assert sum(meta["ranks"].values()) == 192


OUTPUT_BLOCKS = [(page, code) for page, marker, _, code in ALL_BLOCKS if marker == "output"]


@pytest.mark.parametrize(("page", "block"), OUTPUT_BLOCKS, ids=[f"{p}:{b.split()[2]}" for p, b in OUTPUT_BLOCKS])
def test_output_blocks_are_what_the_command_prints(page: str, block: str, monkeypatch: pytest.MonkeyPatch) -> None:
    command, _, shown = block.partition("\n")
    assert command.startswith("$ adarank "), f"{page}: an output block starts with `$ adarank ...`"
    monkeypatch.chdir(ROOT)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(shlex.split(command[2:])[1:]) == 0
    assert printed.getvalue().strip() == shown.strip()


def _commands(block: str) -> list[list[str]]:
    """The `$ ...` commands of a shell block, continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line[2:].split("  #")[0]) for line in joined.splitlines() if line.startswith("$ ")]


COMMAND_BLOCKS = [(page, code) for page, marker, _, code in ALL_BLOCKS if marker == "commands"]
QUICK = ["train.max_steps=2", "train.batch_size=4", "data.max_train_samples=16", "data.max_eval_samples=8",
         "wandb.mode=disabled"]  # fmt: skip
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.mark.slow
@pytest.mark.parametrize(("page", "block"), COMMAND_BLOCKS, ids=[p for p, _ in COMMAND_BLOCKS])
def test_command_blocks_run(page: str, block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block's commands as a user runs them, each training run with 2 steps on a slice, and a tiny
    Llama (with a chat template) standing in for SmolLM2, whose weights CI has too but whose steps take
    seconds each. Each run must finish and write its metrics."""
    from conftest import save_tiny_model
    from transformers import AutoTokenizer

    monkeypatch.chdir(tmp_path)
    llama = tmp_path / "llama"
    save_tiny_model(llama, llama=True)
    tokenizer = AutoTokenizer.from_pretrained(llama)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(llama)
    commands = _commands(block)
    assert commands, f"{page}: a commands block without `$ ` lines"
    for command in commands:
        if command[0] == "python":
            subprocess.run([sys.executable, str(ROOT / command[1]), *command[2:]], check=True)
            continue
        assert command[0] == "adarank", command
        args = [a.replace("model.name_or_path=smollm2", f"model.name_or_path={llama}") for a in command[1:]]
        assert main([*args, *QUICK]) == 0, command
        out = next(a.split("=", 1)[1] for a in args if a.startswith("output_dir="))
        metrics = json.loads((tmp_path / out / "metrics.json").read_text())
        assert metrics["steps"] == 2 and metrics["world_size"] == 1, command


def test_key_table_is_the_schema() -> None:
    text = PAGES["docs/configuration.md"].read_text()
    listed = text.split("<!-- config-keys:start -->\n", 1)[1].split("\n<!-- config-keys:end -->", 1)[0]
    assert listed.strip() == key_table(), (
        "docs/configuration.md's key table differs from adarank/config: paste the output of "
        "`python -c 'from adarank.config import key_table; print(key_table())'` between its markers"
    )


# ---------------------------------------------------------------------------------------------------------
# Figures: every measured figure the README and the docs state is mapped in docs/figures.yaml to the
# archived record it comes from, and recomputed here from that record.

FIGURES = yaml.safe_load((ROOT / "docs" / "figures.yaml").read_text())
# A figure: a decimal (with its sign), a percentage, a ratio such as 0.93x, or a count with thousands commas
# (a budget label such as "1x" or "1/16" is none).
FIGURE = re.compile(r"(?<![\w.])[+-]?(?:\d{1,3}(?:,\d{3})+|\d+\.\d+|\d+(?=%))(?:%|x\b)?")
UNARCHIVED = "single unarchived observation"


def prose(page: str) -> str:
    """The page's text with code blocks, code spans, HTML comments, link targets and the key table
    blanked out (same length, so positions still match)."""
    text = PAGES[page].read_text()

    def blank(match: re.Match[str]) -> str:
        return re.sub(r"[^\n]", " ", match.group(0))

    for pattern in (r"<!-- config-keys:start -->.*?<!-- config-keys:end -->", r"^```.*?^```", r"<!--.*?-->",
                    r"`[^`\n]*`", r"\]\([^)]*\)"):  # fmt: skip
        text = re.sub(pattern, blank, text, flags=re.S | re.M)
    return text


def _paragraphs(text: str) -> list[tuple[int, int]]:
    """(start, end) of each paragraph: lines up to a blank line or the next list item."""
    spans, start, offset = [], 0, 0
    for line in text.splitlines(keepends=True):
        if not line.strip() or re.match(r"\s*([-*]|\d+\.) ", line):
            spans.append((start, offset))
            start = offset
        offset += len(line)
    return [*spans, (start, offset)]


def unmapped_figures(page: str) -> list[str]:
    text = prose(page)
    covered = [False] * len(text)
    for entry in FIGURES["figures"]:
        if entry["page"] == page:
            for match in re.finditer(re.escape(entry["text"]), text):
                covered[match.start() : match.end()] = [True] * (match.end() - match.start())
    for entry in FIGURES.get("not_figures", []):  # numbers that are no measurement: versions, definitions
        if entry["page"] == page:
            for match in re.finditer(re.escape(entry["text"]), text):
                covered[match.start() : match.end()] = [True] * (match.end() - match.start())
    for start, end in _paragraphs(text):
        if UNARCHIVED in text[start:end].replace("\n", " ").replace("  ", " "):
            covered[start:end] = [True] * (end - start)
    return [
        f"{page}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for m in FIGURE.finditer(text)
        if not all(covered[m.start() : m.end()])
    ]


def test_every_stated_figure_is_mapped_to_a_record() -> None:
    unmapped = [figure for page in PAGES for figure in unmapped_figures(page)]
    assert not unmapped, (
        "figures stated in the README or docs without an entry in docs/figures.yaml (or the words "
        f"'{UNARCHIVED}' in their paragraph): {unmapped}"
    )


def test_the_figure_check_finds_an_unmapped_figure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("Reaches 81.37% (`0.5` in code is not a figure), 1,182 rows, 0.93x the time.\n\n"
                    f"- Once 12.5% here: a {UNARCHIVED}.\n- But 3.5% here is not.\n")  # fmt: skip
    monkeypatch.setitem(PAGES, "docs/page.md", page)
    assert [f.split(": ")[1] for f in unmapped_figures("docs/page.md")] == ["81.37%", "1,182", "0.93x", "3.5%"]


def _read(path: str) -> object:
    file = ROOT / path
    if file.suffix == ".jsonl":
        return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    if file.suffix in (".yaml", ".yml"):
        return yaml.safe_load(file.read_text())
    return json.loads(file.read_text())


def _field(record: object, field: str) -> object:
    for part in field.split("."):
        record = record[int(part)] if isinstance(record, list) else record[part]  # type: ignore[index]
    return record


@functools.cache
def _output(command: str) -> str:
    """The stdout of a generator command, run once per session; `{tmp}` in it is a fresh folder."""
    folder = tempfile.mkdtemp(prefix="figures-")
    done = subprocess.run(command.replace("{tmp}", folder), shell=True, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)
    assert done.returncode == 0, f"`{command}` failed: {done.stderr[-2000:]}"
    return done.stdout


def recompute(entry: dict) -> str:
    """The figure as its source gives it: ``record`` (a path or glob) + ``field`` (+ ``reduce``,
    ``scale``, ``format``), or a ``python`` snippet that sets ``value`` from the records, or a
    ``command`` whose output must contain the figure (then the figure itself is returned)."""
    if "command" in entry:
        found = entry["text"] in _output(entry["command"])
        return entry["text"] if found else f"(not in the output of `{entry['command']}`)"
    if "python" in entry:

        def paths(pattern: str) -> list[str]:
            return sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern))

        scope: dict = {"read": _read, "glob": paths, "ROOT": ROOT}
        exec(entry["python"], scope)
        value = scope["value"]
    else:
        paths = sorted(ROOT.glob(entry["record"]))
        assert paths, f"no record matches {entry['record']}"
        values = [_field(_read(str(p.relative_to(ROOT))), entry["field"]) for p in paths]
        reduce = entry.get("reduce", "one")
        if reduce == "one":
            assert len(values) == 1, f"{entry['record']} matches {len(values)} records; give `reduce`"
            value = values[0]
        else:
            reducers = {"mean": lambda v: sum(v) / len(v), "min": min, "max": max, "sum": sum, "count": len}
            value = reducers[reduce](values)
    return entry.get("format", "{}").format(value * entry.get("scale", 1) if entry.get("scale") else value)


@pytest.mark.parametrize("entry", FIGURES["figures"], ids=[f"{e['page']}:{e['text']}" for e in FIGURES["figures"]])
def test_stated_figure_is_its_record(entry: dict) -> None:
    assert entry["page"] in PAGES, f"figures.yaml names a page that does not exist: {entry['page']}"
    assert entry["text"] in prose(entry["page"]), f"{entry['page']} no longer states `{entry['text']}`"
    assert recompute(entry) == entry["text"], f"{entry['page']} states {entry['text']}; its record gives otherwise"


# ---------------------------------------------------------------------------------------------------------
# The site.


@pytest.mark.slow
def test_site_builds_strict_and_reads_offline_in_a_browser(tmp_path: Path) -> None:
    """`make docs`' build (warnings fail it), then every page in headless Chromium from disk: it loads,
    its stylesheets and images load, no script fails, no link points outside the site, nothing comes
    from the web."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (site / "index.html").is_file() and (site / "api.html").is_file()
    assert "RankAllocator" in (site / "api.html").read_text()  # the reference is generated from the docstrings
    browser = shutil.which("chromium")
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and chromium is missing: the browser check must not be skipped in CI")
        pytest.skip("needs Debian's chromium (apt-get install chromium) for the browser half")
    checked = subprocess.run([sys.executable, str(ROOT / "tools" / "check_report.py"), "--site", str(site),
                              "--browser", browser], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert checked.returncode == 0, checked.stdout[-3000:]
