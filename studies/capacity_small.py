"""The small version of the fact-capacity task (issue 39), for a fast CI test and its thresholds.

A randomly initialised tiny Llama (MiniLM's tokenizer, as the package tests' tiny models) is trained on
a few dozen invented facts (studies/facts.py) with adarank's `train`, in this process, and scored on the
same facts (exact match, answer-token loss): a capacity measure. Arms at one final adapter budget:

    adalora   adarank AdaLoRA (defaults), budget.target_params = the budget, init_rank --init-rank
    lora      adarank LoRA at rank --rank on every targeted module (the budget it spends is the budget)

    python studies/capacity_small.py --arms adalora lora --seeds 0 1 2 --out runs/capacity/small

Each run goes to OUT/<arm>/seed<k> (config.yaml, metrics.json, allocation.json, commit.txt); a finished run
is skipped. The CI test (studies/tests/test_capacity_small.py) runs one seed of this setup and holds it
to thresholds taken from the archived runs (studies/runs/capacity/small/).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import facts as facts_module  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Small:
    """The small task's fixed settings (the CI test uses these defaults)."""

    facts: int = 48
    draw: int = 0
    hidden: int = 64
    layers: int = 2
    steps: int = 120
    batch_size: int = 16
    learning_rate: float = 1e-2
    init_rank: int = 3
    rank: int = 1
    init_range: float = 0.3
    """The random base's initializer_range: at Llama's 0.02 the frozen head's logits cannot move far from
    uniform (after the final norm the hidden state's length is fixed), so no adapter could store a fact."""


def build_model(folder: Path, small: Small) -> None:
    """A random tiny Llama LM (seed 0) with MiniLM's tokenizer ([SEP] as end of sequence) in ``folder``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from adarank.io.assets import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    tokenizer.eos_token = "[SEP]"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=small.hidden, intermediate_size=2 * small.hidden,
        num_hidden_layers=small.layers, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=128, initializer_range=small.init_range,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def overrides(arm: str, small: Small, model: Path, data: Path, out: Path, seed: int, budget: int) -> list[str]:
    """The `adarank train` overrides of one run."""
    common = [
        f"model.name_or_path={model}", f"data.dataset={data}", "data.format=generation",
        "data.prompt_field=prompt", "data.response_field=response", "data.max_length=48",
        "data.max_answer_tokens=12", f"adapter.target_modules=[{','.join(TARGETS)}]",
        f"train.max_steps={small.steps}", f"train.batch_size={small.batch_size}",
        f"train.learning_rate={small.learning_rate}", "train.eval_batch_size=64",
        "train.evaluate_before=false", "wandb.mode=disabled", f"seed={seed}", f"output_dir={out}",
        "overwrite=true", "budget.mask_interval=4",
    ]  # fmt: skip
    if arm == "adalora":
        return [*common, f"budget.target_params={budget}", f"budget.init_rank={small.init_rank}"]
    if arm == "lora":
        return [
            *common,
            "budget.schedule=constant",
            f"budget.init_rank={small.rank}",
            f"budget.target_rank={small.rank}",
        ]
    raise ValueError(f"unknown arm `{arm}` (adalora | lora)")


def lora_params(model: Path, rank: int) -> int:
    """LoRA's parameter count at ``rank`` on every targeted module: the budget both arms get."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
    suffixes = tuple(f".{t}" for t in TARGETS)
    return sum(
        rank * (m.in_features + m.out_features + 1)
        for name, m in net.named_modules()
        if isinstance(m, torch.nn.Linear) and name.endswith(suffixes)
    )


def commit() -> str:
    git = {"capture_output": True, "text": True, "cwd": Path(__file__).parent}
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **git).stdout.strip()
    return (head or "unknown") + ("+dirty" if dirty else "")


def run(arm: str, seed: int, work: Path, out: Path, small: Small = Small()) -> dict[str, Any]:
    """One run of ``arm`` at ``seed`` into ``out`` (the model and facts built under ``work`` once);
    returns its metrics."""
    from adarank.checks import load_config
    from adarank.run import train

    model, data = (
        work / f"model-{small.hidden}x{small.layers}-{small.init_range}",
        work / f"facts-{small.facts}-draw{small.draw}",
    )
    if not (model / "config.json").exists():
        build_model(model, small)
    if not (data / "facts.jsonl").exists():
        facts_module.write(facts_module.draw(small.facts, small.draw), data)
    budget = lora_params(model, small.rank)
    cfg = load_config(overrides=overrides(arm, small, model, data, out, seed, budget))
    metrics = train(cfg)
    (out / "commit.txt").write_text(commit() + "\n")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="+", default=["adalora", "lora"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs/capacity/small"))
    parser.add_argument("--set", nargs="*", default=[], help="Small fields, e.g. learning_rate=3e-3 facts=64")
    args = parser.parse_args(argv)
    fields = {k: v for k, _, v in (s.partition("=") for s in args.set)}
    types = {f: type(getattr(Small(), f)) for f in Small.__dataclass_fields__}
    unknown = sorted(set(fields) - set(types))
    if unknown:
        parser.error(f"unknown --set field(s) {', '.join(unknown)}; known: {', '.join(types)}")
    small = Small(**{k: types[k](v) for k, v in fields.items()})
    tag = "_".join(f"{k}-{v}" for k, v in sorted(fields.items())) or "default"
    for arm in args.arms:
        for seed in args.seeds:
            out = args.out / tag / arm / f"seed{seed}"
            if (out / "metrics.json").exists():
                continue
            m = run(arm, seed, args.out / "work", out, small)
            keys = ("test_accuracy", "test_answer_loss", "adapter_params_final", "total_rank_final", "train_seconds")
            print(json.dumps({"arm": arm, "seed": seed, "tag": tag, **{k: m.get(k) for k in keys}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
