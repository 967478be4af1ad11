"""File sizes of a run's three exports against an unpruned adapter at the initial rank.

    python benchmarks/export_sizes.py RUN_DIR [--out runs/export_sizes]

Exports the run's adapter as native, peft and merged, then injects fresh adapters at the run's
init_rank on the same modules (nothing pruned) and exports those as native and peft, and prints
the sizes in bytes (the files each folder holds, tokenizer files excluded).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from adarank.checks import load_config
from adarank.core.export import export_merged, export_native, export_peft, load_adapter
from adarank.core.inject import inject_adapters
from adarank.training.setup import base_description, load_base

TOKENIZER_FILES = {
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "chat_template.jinja",
}


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.name not in TOKENIZER_FILES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/export_sizes"))
    args = parser.parse_args()
    cfg = load_config(args.run_dir / "config.yaml", ["overwrite=true"])
    shutil.rmtree(args.out, ignore_errors=True)
    tokenizer, model, folder = load_base(base_description(cfg))
    load_adapter(model, args.run_dir / "adapter")
    ranks = json.loads((args.run_dir / "allocation.json").read_text())
    rows = {
        f"adarank native (pruned, total rank {sum(ranks.values())})": export_native(model, args.out / "native", {}),
        "PEFT LoRA (pruned, per-module ranks)": export_peft(model, args.out / "peft", str(folder)),
        "merged model (no adapter)": export_merged(model, args.out / "merged"),
    }
    _, fresh, _ = load_base(base_description(cfg))
    meta = json.loads((args.run_dir / "adapter" / "adarank_adapter.json").read_text())
    head = sorted({name.rsplit(".", 1)[0] for name in meta["trained_parameters"]})
    targets = [f"re:{re.escape(name)}" for name in ranks]
    inject_adapters(fresh, targets, cfg.budget.init_rank, cfg.adapter.alpha, modules_to_save=head)
    total = cfg.budget.init_rank * len(ranks)
    rows[f"adarank native, unpruned (rank {cfg.budget.init_rank} everywhere, total {total})"] = export_native(
        fresh, args.out / "native_unpruned", {}
    )
    rows[f"PEFT LoRA r={cfg.budget.init_rank}, unpruned"] = export_peft(fresh, args.out / "peft_unpruned", str(folder))
    print("| export | bytes |\n|---|---|")
    for name, path in rows.items():
        print(f"| {name} | {folder_size(path):,} |")


if __name__ == "__main__":
    main()
