"""Command line: `adarank train|plan [CONFIG] [key=value ...]`, `adarank inspect RUN_DIR`,
`adarank compare RUN_DIR RUN_DIR ...`, `adarank intrinsic-dim [CONFIG] [key=value ...]`,
`adarank export RUN_DIR --format native|peft|merged --out DIR`, `adarank convert PEFT_ADALORA_DIR --out DIR`.

The commands' modules are imported inside the functions that run them, on purpose: `adarank --help`,
`--version` and argument errors import neither torch nor transformers (a test holds it). Every such
import points down the layers (tests/test_import_layers.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from adarank.config import ConfigError, IntrinsicDimRunConfig, RunConfig, key_docs
from adarank.core.budget import budget_warnings

REPEAT_SUFFIX = "-repeat"


def _key_help() -> list[str]:
    """Every config key with its default and its one-line description (from the schema's docstrings)."""
    lines = []
    for key, (default, doc) in key_docs().items():
        lines += [f"  {key} = {default!r}", f"      {doc}"]
    return lines


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] [key=value ...]",
        help="an optional YAML file (it may `include:` others), then overrides such as budget.target_rank=4",
    )


def _resume_items(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """`resume=RUN_DIR` without a config file continues that run: its config.yaml, its directory."""
    resume = next((o.partition("=")[2] for o in overrides if o.startswith("resume=")), None)
    if not resume or config is not None:
        return config, overrides
    saved = Path(resume) / "config.yaml"
    return (str(saved) if saved.is_file() else None), [*overrides, f"output_dir={resume}"]


def _repeat_items(config: str | None, overrides: list[str]) -> list[str]:
    """`adarank train RUN/config.yaml` repeats a finished run in a new directory (RUN-repeat,
    RUN-repeat2, ...), never over the original, unless ``output_dir`` is given."""
    if config is None or any(o.startswith(("output_dir=", "resume=")) for o in overrides):
        return overrides
    run = Path(config).parent
    if Path(config).name != "config.yaml" or not (run / "metrics.json").is_file():
        return overrides
    count, new = 1, Path(f"{run}{REPEAT_SUFFIX}")
    while new.exists():
        count += 1
        new = Path(f"{run}{REPEAT_SUFFIX}{count}")
    print(f"adarank: repeating the run of {run} in {new} (give output_dir=... to choose another)")
    return [*overrides, f"output_dir={new}"]


def _split(items: list[str]) -> tuple[str | None, list[str]]:
    config = items[0] if items and "=" not in items[0] else None
    return config, items[1:] if config else items


def _parser() -> argparse.ArgumentParser:
    from adarank._version import __version__

    parser = argparse.ArgumentParser(prog="adarank", description="Adaptive-rank (AdaLoRA) fine-tuning.")
    parser.add_argument("--version", action="version", version=f"adarank {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    keys = "config keys (key = default, then what it does):\n" + "\n".join(_key_help())
    raw = argparse.RawDescriptionHelpFormatter
    train = sub.add_parser(
        "train",
        help="fine-tune with a budget schedule (default: MiniLM on Rotten Tomatoes)",
        formatter_class=raw,
        epilog=keys,
    )
    _add_config_args(train)
    plan = sub.add_parser(
        "plan", help="validate a config and show its budget plan, without training", formatter_class=raw, epilog=keys
    )
    _add_config_args(plan)
    plan.add_argument("--png", type=Path, help="also write the b(t) plot to this file (default: write nothing)")
    intrinsic = sub.add_parser(
        "intrinsic-dim",
        help="the task's intrinsic dimension: the smallest random subspace of the target modules' weights that "
        "reaches intrinsic_dim.fraction of the way from the head-only floor to a full fine-tune",
        formatter_class=raw,
        epilog=keys,
    )
    _add_config_args(intrinsic)
    inspect = sub.add_parser("inspect", help="print the final rank table (layers x weight types) of a run")
    inspect.add_argument("path", type=Path, help="a run directory, its allocation.json, or a native adapter folder")
    compare = sub.add_parser("compare", help="compare finished runs: a table here and compare.html with their heatmaps")
    compare.add_argument("runs", type=Path, nargs="+", help="two or more run directories; the first is the reference")
    compare.add_argument("--out", type=Path, default=Path("compare"),
                         help="folder for compare.html and its PNGs (default: ./compare)")  # fmt: skip
    analyze = sub.add_parser("analyze", help="what an adapter learned: spectra, effective rank, amplification, "
                             "and subspace similarity to a second adapter")  # fmt: skip
    analyze.add_argument("path", type=Path, help="a run directory or a native adapter folder")
    analyze.add_argument("other", type=Path, nargs="?", help="a second one on the same base (similarity)")
    analyze.add_argument("--out", type=Path, help="folder for analysis.json/.html and PNGs (default: RUN/analysis "
                         "for a run, else ./analysis)")  # fmt: skip
    export = sub.add_parser("export", help="export a run's adapter: native, PEFT LoRA or merged weights")
    export.add_argument("source", type=Path, help="a run directory (its adapter/) or a native adapter folder")
    export.add_argument("--format", choices=("native", "peft", "merged"), required=True)
    export.add_argument("--out", type=Path, required=True, help="folder to create")
    export.add_argument(
        "--overwrite", action="store_true", help="replace an earlier export at --out (never a folder of other files)"
    )
    convert = sub.add_parser(
        "convert", help="turn a PEFT AdaLoRA adapter into a PEFT LoRA adapter with per-module ranks (for serving)"
    )
    convert.add_argument("source", type=Path, help="the folder PEFT's save_pretrained wrote for an AdaLoRA model")
    convert.add_argument("--out", type=Path, required=True, help="folder to create")
    convert.add_argument("--native", type=Path, help="also write adarank's native export of it to this folder")
    convert.add_argument(
        "--overwrite", action="store_true", help="replace an earlier export at --out (never a folder of other files)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `adarank` command; returns the exit status (2 for a refused input). Help, --version and
    argument errors import neither torch nor transformers."""
    args = _parser().parse_args(argv)
    if args.command == "inspect":
        return _inspect(args.path)
    if args.command == "export":
        return _export(args.source, args.format, args.out, args.overwrite)
    if args.command == "compare":
        return _compare(args.runs, args.out)
    if args.command == "convert":
        return _convert(args.source, args.out, args.overwrite, args.native)
    if args.command == "analyze":
        return _analyze(args.path, args.other, args.out)
    try:
        config, overrides = _resume_items(*_split(args.items))
        from adarank.checks import load_config  # reads models and data: torch, not for --help

        schema = IntrinsicDimRunConfig if args.command == "intrinsic-dim" else RunConfig
        cfg = load_config(config, _repeat_items(config, overrides), check_model=True, schema=schema)
        for warning in budget_warnings(cfg.budget, cfg.train.max_steps):
            print(f"adarank: warning: {warning}", file=sys.stderr)
        if args.command == "plan":
            _plan(cfg, args.png)
        elif isinstance(cfg, IntrinsicDimRunConfig):  # the intrinsic-dim command
            from adarank.analysis.intrinsic import intrinsic_dimension

            intrinsic_dimension(cfg)
        else:
            from adarank.run import train as run_train
            from adarank.training.engine import close_distributed, exit_distributed

            run_train(cfg)
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: exit 0, not gloo's abort at shutdown
                exit_distributed(0)
            close_distributed()
    except (ConfigError, FileNotFoundError) as err:
        print(f"adarank: {err}", file=sys.stderr)
        return 2
    return 0


def _plan(cfg: RunConfig, png: Path | None) -> None:
    """Print the plan summary; write the b(t) plot only where ``--png`` asks (a dry run writes nothing)."""
    from adarank.reporting.plan import plot_budget
    from adarank.training.setup import describe

    summary, budget_plan = describe(cfg)
    print(summary)
    if png is not None:
        print(f"plot: {plot_budget(budget_plan, png)}")


def _export(source: Path, fmt: str, out: Path, overwrite: bool) -> int:
    from adarank.core.export import (
        ExportError,
        check_destination,
        export_merged,
        export_native,
        export_peft,
        load_adapter,
        read_native,
    )
    from adarank.training.setup import load_base

    folder = source / "adapter" if (source / "adapter").is_dir() else source
    try:
        check_destination(out, overwrite)  # before loading anything
        meta, _ = read_native(folder)
        tokenizer, model, base_folder = load_base(meta.get("base_model") or {})
        load_adapter(model, folder)
        if fmt == "native":
            export_native(model, out, meta["base_model"], overwrite)
        elif fmt == "peft":
            export_peft(model, out, str(base_folder), overwrite)
        else:
            export_merged(model, out, tokenizer, overwrite, base_model=meta["base_model"])
    except (ExportError, ConfigError) as err:
        print(f"adarank: {err}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{fmt} export written to {out} ({size:,} bytes)")
    quantized = (meta.get("base_model") or {}).get("quantization", "none")
    if fmt == "merged" and quantized != "none":
        print(f"the {quantized} base was dequantized to float32 before merging: the merged weights are float32")
    return 0


def _convert(source: Path, out: Path, overwrite: bool, native: Path | None) -> int:
    from adarank.core.convert import convert_adalora
    from adarank.core.export import ExportError

    try:
        ranks = convert_adalora(source, out, overwrite, native)
    except ExportError as err:
        print(f"adarank: {err}", file=sys.stderr)
        return 2
    print(f"PEFT LoRA written to {out}: {len(ranks)} modules, total rank {sum(ranks.values())}")
    if native is not None:
        print(f"native adarank export written to {native}")
    return 0


def _analyze(path: Path, other: Path | None, out: Path | None) -> int:
    from adarank.analysis.analyze import analysis_table, analyze, write_analysis
    from adarank.core.export import ExportError

    try:
        result = analyze(path, other)
    except (ExportError, ConfigError, ValueError) as err:
        print(f"adarank: {err}", file=sys.stderr)
        return 2
    print(analysis_table(result))
    is_run = (path / "metrics.json").is_file()
    page = write_analysis(result, out or (path / "analysis" if is_run else Path("analysis")))
    print(f"written: {page}")
    if is_run:
        from adarank.reporting.dashboards import log_analysis

        run_id = log_analysis(path, result, sorted(page.parent.glob("*.png")))
        if run_id:
            print(f"logged to the run's wandb run {run_id} (analysis/modules and the figures)")
    return 0


def _compare(paths: list[Path], out: Path) -> int:
    from adarank.reporting.compare import compare_table, load_runs, write_compare

    try:
        runs = load_runs(paths)
    except ValueError as err:
        print(f"adarank: {err}", file=sys.stderr)
        return 2
    print(compare_table(runs))
    print(f"written: {write_compare(runs, out)}")
    return 0


def _inspect(path: Path) -> int:
    import json

    from adarank.reporting.report import rank_table

    file = path / "allocation.json" if path.is_dir() else path
    if (path / "adarank_adapter.json").is_file():  # a native adapter export
        file = path / "adarank_adapter.json"
    try:
        ranks = json.loads(file.read_text())
        if file.name == "adarank_adapter.json" and isinstance(ranks, dict):
            ranks = ranks.get("ranks")
        if not isinstance(ranks, dict) or not all(isinstance(r, int) for r in ranks.values()):
            raise ValueError("expected a JSON object of module name -> rank")
    except (OSError, ValueError) as err:
        hint = "give a run directory, its allocation.json or an adapter folder"
        print(f"adarank: cannot read ranks from `{file}` ({err}); {hint}.", file=sys.stderr)
        return 2
    print(rank_table(ranks))
    print(f"{len(ranks)} adapters, total rank {sum(ranks.values())}, {sum(r == 0 for r in ranks.values())} at rank 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
