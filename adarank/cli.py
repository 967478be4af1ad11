"""Command line: `adarank train [CONFIG] [key=value ...]`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields, is_dataclass

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adarank", description="Adaptive-rank (AdaLoRA) fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="fine-tune with a budget schedule (default: MiniLM on Rotten Tomatoes)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (key = default):\n" + "\n".join(_key_help()),
    )
    train.add_argument(
        "items",
        nargs="*",
        metavar="[CONFIG] [key=value ...]",
        help="an optional YAML file, then overrides such as budget.target_rank=4",
    )
    args = parser.parse_args(argv)
    items: list[str] = args.items
    config = items[0] if items and "=" not in items[0] else None
    overrides = items[1:] if config else items
    try:
        cfg = load_config(config, overrides)
        from adarank.run import train as run_train

        run_train(cfg)
    except ConfigError as err:
        print(f"adarank: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
