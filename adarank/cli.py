"""Command line: `adarank train|plan [CONFIG] [key=value ...]`, `adarank inspect RUN_DIR`,
`adarank export RUN_DIR --format native|peft|merged --out DIR`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

from adarank.config import ConfigError, RunConfig, load_config


def _key_help(schema: type = RunConfig, prefix: str = "") -> list[str]:
    lines = []
    for f in fields(schema):
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default):
            lines += _key_help(type(default), f"{prefix}{f.name}.")
        else:
            lines.append(f"  {prefix}{f.name} = {default!r}")
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


def _split(items: list[str]) -> tuple[str | None, list[str]]:
    config = items[0] if items and "=" not in items[0] else None
    return config, items[1:] if config else items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adarank", description="Adaptive-rank (AdaLoRA) fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True)
    keys = "config keys (key = default):\n" + "\n".join(_key_help())
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
    plan.add_argument("--png", type=Path, help="where to write the b(t) plot (default: OUTPUT_DIR/budget_plan.png)")
    inspect = sub.add_parser("inspect", help="print the final rank table (layers x weight types) of a run")
    inspect.add_argument("path", type=Path, help="a run directory, its allocation.json, or a native adapter folder")
    export = sub.add_parser("export", help="export a run's adapter: native, PEFT LoRA or merged weights")
    export.add_argument("source", type=Path, help="a run directory (its adapter/) or a native adapter folder")
    export.add_argument("--format", choices=("native", "peft", "merged"), required=True)
    export.add_argument("--out", type=Path, required=True, help="folder to create")
    export.add_argument("--overwrite", action="store_true", help="replace an existing export at --out")
    args = parser.parse_args(argv)
    if args.command == "inspect":
        return _inspect(args.path)
    if args.command == "export":
        return _export(args.source, args.format, args.out, args.overwrite)
    try:
        cfg = load_config(*_resume_items(*_split(args.items)))
        if args.command == "plan":
            from adarank.plan import plot_budget
            from adarank.run import describe

            summary, budget_plan = describe(cfg)
            print(summary)
            png = plot_budget(budget_plan, args.png or Path(cfg.output_dir) / "budget_plan.png")
            print(f"plot: {png}")
        else:
            from adarank.run import train as run_train

            run_train(cfg)
    except (ConfigError, FileNotFoundError) as err:
        print(f"adarank: {err}", file=sys.stderr)
        return 2
    return 0


def _export(source: Path, fmt: str, out: Path, overwrite: bool) -> int:
    from adarank.export import (
        ExportError,
        check_destination,
        export_merged,
        export_native,
        export_peft,
        load_adapter,
        read_native,
    )
    from adarank.run import load_base

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
    return 0


def _inspect(path: Path) -> int:
    import json

    from adarank.report import rank_table

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
