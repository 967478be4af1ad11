"""A benchmark whose right answer is known: can rank allocation find low-rank updates planted in a
few modules of a real base model? (issue 16, part 2)

Teacher = base + ΔW_m in a few modules m chosen by the seed: ΔW_m = U diag(σ) Vᵀ of rank r_m, with
U and V random orthonormal and equal singular values scaled so ||ΔW_m||_F = ratio · ||W_m||_F.
Student = the same base with adapters on every candidate linear, trained to match the teacher's
hidden states at EVERY layer (so a later module cannot absorb an update planted earlier) on real
text (Rotten Tomatoes snippets), no dropout anywhere. The final budget equals the planted parameter
count. Scored by

    recall   = Σ_m min(found_m, planted_m) / Σ_m planted_m
    residual = the student's matching loss on held-out text / the base's (1 = learned nothing)

Methods: `adalora` (adarank's allocator, cubic schedule from init_rank per module to the planted
budget), `oracle` (adapters on the planted modules alone at the planted ranks: its residual must
approach 0, or the training setup is at fault), `random` (the planted rank multiset on random modules:
the negative control).

Recall is also reported per site (`site_recall`): within an attention block a value update is
matched by an output-projection update and a query update by a key update, so those pairs are one
site each.

    python studies/planted_rank.py --model minilm --seeds 0 1 2 --steps 200

The runs in studies/runs/planted/minilm.jsonl used budget.selection=prefix, the default before the allocator
ablation (reports/allocator.md); `--set budget.selection=prefix` reruns them as they were.

STATUS: a prototype (issue 16 is open). Measured so far, 200 steps, 1 thread, commit after bff6735:
- A real fine-tune's size: the default run (`make train`, 400 steps) has ||ΔW||/||W|| of median
  0.072 over its 24 adapters (0.022-0.160; attention.output.dense 0.106, query 0.060), hence the
  default ratio 0.07.
- MiniLM, seed 0, 4 modules planted with ranks 2, 3, 4, 4 (13 triplets): at ratio 0.07, oracle
  residual 0.004, adalora recall 0.923 (12 of 13; one triplet went from layer 5's key to layer 1's
  query), residual 0.018 (2 threads: 120 s and 152 s). At ratio 0.3: oracle 0.006, adalora recall
  0.923, residual 0.021.
- The tiny random 4-layer model (`--model tiny`, seeds 0-2) does not identify the answer: adalora
  reaches the oracle's residual (0.015-0.039) with module recall 0.11-0.50, so other modules mimic
  the plants there. It cannot serve as the CI test; a fast test needs a smaller real model or
  fewer MiniLM steps, with its threshold fixed before the 3-seed run.
- Not done yet: 3 seeds on MiniLM at ratio 0.07, LoRA at equal and larger budgets, PEFT AdaLoRA,
  the CI test, the report.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from sweep import commit  # studies/sweep.py: the checked-out commit, recorded with every run
from torch import nn

from adarank import BudgetConfig, RankAllocator, orthogonality_penalty, param_groups
from adarank.config import ImportanceConfig
from adarank.core.inject import build_adapters, find_adapters, module_shapes
from adarank.core.warm_start import warm_start_
from adarank.data import default_model_path, load_splits


@dataclass(frozen=True)
class Setup:
    model: str = "tiny"  # tiny (a 4-layer BERT, random weights) | minilm (the embedded all-MiniLM-L6-v2)
    planted_modules: int = 4
    max_planted_rank: int = 4
    ratio: float = 0.07  # ||ΔW||_F / ||W||_F of each planted update: the default run's median (see STATUS)
    init_rank: int = 4
    steps: int = 300
    batch_size: int = 16
    max_length: int = 32
    learning_rate: float = 5e-3
    orth_weight: float = 0.1
    eval_batches: int = 4
    init: str = "orthonormal"  # adapter.init: orthonormal | gradient (warm start on the first init_batches)
    init_batches: int = 4
    variant: str = "base"  # a name for the options below (studies/study_allocator.sh)
    options: tuple[str, ...] = ()  # `budget.KEY=VALUE` / `importance.KEY=VALUE` for adarank's AdaLoRA,
    # or `adapter.orth_weight=W`, `adapter.init=I`, `adapter.init_batches=N`


def section_options(setup: Setup, section: str) -> dict[str, Any]:
    """The `SECTION.*` options of ``setup`` (budget, importance) as keyword arguments of that section's
    config class (values read as YAML)."""
    pairs = [option.split("=", 1) for option in setup.options]
    return {key.split(".", 1)[1]: yaml.safe_load(value) for key, value in pairs if key.startswith(f"{section}.")}


def with_options(setup: Setup, options: list[str]) -> Setup:
    """``setup`` with ``options`` applied: `adapter.orth_weight`, `adapter.init` and `adapter.init_batches`
    set theirs, `budget.*` and `importance.*` are kept for the allocator; any other key is refused."""
    adapter = {"orth_weight": setup.orth_weight, "init": setup.init, "init_batches": setup.init_batches}
    problems = []
    for option in options:
        key, sep, value = option.partition("=")
        name = key.removeprefix("adapter.")
        if key.startswith("adapter.") and name in adapter and sep:
            kind = type(adapter[name])
            try:
                adapter[name] = kind(value)
            except ValueError:
                problems.append(f"--set {option}: {value!r} is not a {kind.__name__}")
        elif not (key.startswith(("budget.", "importance.")) and sep):
            problems.append(
                f"--set {option}: expected budget.KEY=VALUE, importance.KEY=VALUE, adapter.orth_weight=W, "
                "adapter.init=orthonormal|gradient or adapter.init_batches=N"
            )
    if adapter["init"] not in ("orthonormal", "gradient"):
        problems.append(f"--set adapter.init={adapter['init']}: expected orthonormal or gradient")
    if int(adapter["init_batches"]) < 1:
        problems.append(f"--set adapter.init_batches={adapter['init_batches']}: expected N >= 1")
    if problems:
        raise SystemExit("\n".join(problems))
    return replace(setup, **adapter, options=tuple(options))  # type: ignore[arg-type]


def base_model(setup: Setup, seed: int) -> tuple[Any, nn.Module]:
    """Tokenizer and base encoder (dropout off)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    if setup.model == "minilm":
        model = BertModel.from_pretrained(
            default_model_path(), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        )
    else:
        torch.manual_seed(1000 + seed)
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        model = BertModel(config)
    return tokenizer, model.eval()


def plant(model: nn.Module, setup: Setup, seed: int) -> dict[str, int]:
    """Add a random rank-r_m update to a few candidate linears of ``model`` (in place); module -> rank."""
    rng = torch.Generator().manual_seed(seed)
    shapes = module_shapes(model, ["all-linear"])
    names = sorted(shapes)
    chosen = [names[i] for i in torch.randperm(len(names), generator=rng)[: setup.planted_modules].tolist()]
    ranks = {n: int(torch.randint(1, setup.max_planted_rank + 1, (1,), generator=rng)) for n in sorted(chosen)}
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, rank in ranks.items():
            weight = modules[name].weight
            d_out, d_in = weight.shape
            left, _ = torch.linalg.qr(torch.randn(d_out, rank, generator=rng))
            right, _ = torch.linalg.qr(torch.randn(d_in, rank, generator=rng))
            sigma = setup.ratio * weight.norm() / rank**0.5
            weight.add_(sigma * left @ right.T)
    return ranks


def batches(tokenizer: Any, setup: Setup, split: str, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    texts = load_splits("rotten_tomatoes")[split][0]
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    out = []
    for b in range(count):
        rows = [texts[i] for i in order[b * setup.batch_size : (b + 1) * setup.batch_size]]
        out.append(
            dict(tokenizer(rows, padding=True, truncation=True, max_length=setup.max_length, return_tensors="pt"))
        )
    return out


def matching_loss(student: nn.Module, targets: list[torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the mean squared difference of hidden states at real (unpadded) tokens."""
    hidden = student(**batch, output_hidden_states=True).hidden_states[1:]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    losses = [((h - t) ** 2 * mask).sum() / (mask.sum() * h.shape[-1]) for h, t in zip(hidden, targets, strict=True)]
    return torch.stack(losses).mean()


@torch.no_grad()
def teacher_states(teacher: nn.Module, data: list[dict[str, torch.Tensor]]) -> list[list[torch.Tensor]]:
    return [list(teacher(**b, output_hidden_states=True).hidden_states[1:]) for b in data]


def module_recall(found: dict[str, int], planted: dict[str, int]) -> float:
    """Σ_m min(found_m, planted_m) / Σ_m planted_m."""
    return sum(min(found.get(n, 0), r) for n, r in planted.items()) / sum(planted.values())


SITES = {"query": "scores", "key": "scores", "value": "values", "attention.output.dense": "values"}


def sites(ranks: dict[str, int]) -> dict[str, int]:
    """Ranks summed per site the hidden-state loss can tell apart: within one attention block an update
    of the value projection is matched by one of the output projection (they compose linearly within
    each head), and one of the query by one of the key, so each pair is one site; the FFN's two
    linears are separated by the activation and stay two sites."""
    out: dict[str, int] = {}
    for name, rank in ranks.items():
        layer, _, kind = name.partition(".attention.self.") if ".attention.self." in name else (name, "", "")
        if kind:
            site = f"{layer}.{SITES[kind]}"
        elif name.endswith("attention.output.dense"):
            site = f"{name[: -len('.attention.output.dense')]}.values"
        else:
            site = name
        out[site] = out.get(site, 0) + rank
    return out


METHODS = ("oracle", "adalora", "random", "lora-r1", "lora-r4", "adalora-r1", "peft-adalora")


def student_ranks(
    method: str, setup: Setup, planted: dict[str, int], shapes: dict[str, tuple[int, int]], seed: int
) -> dict[str, int]:
    """The adapters' starting ranks: init_rank everywhere (adarank AdaLoRA at the planted budget, and
    at one rank per module on average), the planted ranks on the planted modules (oracle) or on
    random ones (the negative control), or a uniform LoRA rank on every candidate."""
    if method in ("adalora", "adalora-r1"):
        return dict.fromkeys(shapes, setup.init_rank)
    if method == "oracle":
        return dict(planted)
    if method.startswith("lora-r"):
        return dict.fromkeys(shapes, int(method.removeprefix("lora-r")))
    names = sorted(shapes)  # random: the planted ranks on modules drawn at random
    picks = torch.randperm(len(names), generator=torch.Generator().manual_seed(10_000 + seed))
    return {names[i]: r for i, r in zip(picks.tolist(), sorted(planted.values()), strict=False)}


def peft_adalora(base: nn.Module, setup: Setup, targets: list[str]) -> Any:
    """PEFT's AdaLoRA on every candidate at its smallest budget, target_r = 1 (its budget is whole
    ranks per module on average), with the schedule adarank's AdaLoRA gets."""
    from peft import AdaLoraConfig, get_peft_model

    config = AdaLoraConfig(
        init_r=setup.init_rank, target_r=1, lora_alpha=setup.init_rank, lora_dropout=0.0, target_modules=targets,
        tinit=int(0.1 * setup.steps), tfinal=int(0.3 * setup.steps), deltaT=10, total_step=setup.steps,
        orth_reg_weight=setup.orth_weight,
    )  # fmt: skip
    return get_peft_model(base, config)


def peft_penalty(model: nn.Module) -> torch.Tensor:
    """PEFT AdaLoRA's own orthogonality regulariser (its forward adds it only to a model-computed
    loss): the mean over its A and B matrices of ||AAᵀ - I||_F and ||BᵀB - I||_F."""
    terms = []
    for name, param in model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            gram = param @ param.T if "lora_A" in name else param.T @ param
            terms.append(torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0])))
    return torch.stack(terms).mean()


def peft_ranks(model: Any) -> dict[str, int]:
    """Module name (as in the base model) -> number of PEFT AdaLoRA singular values left nonzero."""
    out = {}
    for name, param in model.named_parameters():
        if name.endswith("lora_E.default"):
            module = name.removeprefix("base_model.model.").removesuffix(".lora_E.default")
            out[module] = int((param != 0).sum())
    return out


def run(setup: Setup, seed: int, method: str) -> dict[str, Any]:
    """Train one student; recall, residual and the found ranks."""
    start = time.perf_counter()
    tokenizer, base = base_model(setup, seed)
    teacher = copy.deepcopy(base)
    planted = plant(teacher, setup, seed)
    shapes = module_shapes(base, ["all-linear"])
    cost = {n: o + i + 1 for n, (o, i) in shapes.items()}
    budget_params = sum(planted[n] * cost[n] for n in planted)
    train = batches(tokenizer, setup, "train", setup.steps, seed)
    held_out = batches(tokenizer, setup, "validation", setup.eval_batches, seed)
    train_targets, held_targets = teacher_states(teacher, train), teacher_states(teacher, held_out)
    student, generator = base, torch.Generator().manual_seed(seed)
    allocator, peft_model = None, None
    if method == "peft-adalora":
        student = peft_model = peft_adalora(base, setup, sorted(shapes))
        penalty = peft_penalty
        optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=setup.learning_rate)
    else:
        adapters = build_adapters(
            student, student_ranks(method, setup, planted, shapes, seed), alpha=setup.init_rank, dropout=0.0,
            trained_parameters=[], generator=generator,
        )  # fmt: skip
        if method.startswith("adalora"):
            target = {"target_params": str(budget_params)} if method == "adalora" else {"target_rank": 1}
            budget = BudgetConfig(
                schedule="cubic",
                init_rank=setup.init_rank,
                t_init=0.1,
                t_final=0.3,
                mask_interval=10,
                **target,
                **section_options(setup, "budget"),
            )  # type: ignore[arg-type]
            importance = ImportanceConfig(**section_options(setup, "importance"))
            allocator = RankAllocator(adapters, budget, importance, total_steps=setup.steps)
        penalty = lambda _: orthogonality_penalty(adapters.values())  # noqa: E731
        if setup.init == "gradient":  # P, Q from the matching loss's gradient on the first training batches
            first = list(zip(train, train_targets, strict=True))[: setup.init_batches]
            warm_start_(student, adapters, first, loss=lambda model, pair: matching_loss(model, pair[1], pair[0]))
        optimizer = torch.optim.AdamW(param_groups(student, setup.learning_rate, singular_lr_multiplier=10))
    with torch.no_grad():  # the student starts as the base exactly (lambda = 0)
        base_loss = sum(float(matching_loss(student, t, b)) for b, t in zip(held_out, held_targets, strict=True))
    scale = len(held_out) / base_loss  # the matching loss in units of the base's: O(1), as a task loss is
    for step, (batch, targets) in enumerate(zip(train, train_targets, strict=True), start=1):
        matching = matching_loss(student, targets, batch) * scale
        term = setup.orth_weight * penalty(student)
        if allocator is not None:  # importance.task_only: the scores leave the penalty's gradient out
            allocator.add_penalty_gradient_(term)
        loss = matching + term
        loss.backward()
        optimizer.step()
        if allocator is not None:
            allocator.step(step, optimizer)
        if peft_model is not None:
            peft_model.base_model.update_and_allocate(step)  # as PEFT's docs say: after step, grads present
        optimizer.zero_grad()
    with torch.no_grad():
        final_loss = sum(float(matching_loss(student, t, b)) for b, t in zip(held_out, held_targets, strict=True))
    if peft_model is not None:
        found = peft_ranks(peft_model)
    else:
        found = allocator.ranks() if allocator else {n: a.live_rank() for n, a in find_adapters(student).items()}
    recall = module_recall(found, planted)
    params = sum(found[n] * cost[n] for n in found)
    return {
        "seed": seed,
        "method": method,
        "variant": setup.variant,
        "recall": recall,
        "site_recall": module_recall(sites(found), sites(planted)),
        "residual": final_loss / base_loss,
        "planted": planted,
        "found": {n: r for n, r in found.items() if r},
        "budget_params": budget_params,
        "final_params": params,
        "seconds": round(time.perf_counter() - start, 1),
    }


LABELS = {
    "oracle": "oracle (adapters on the planted modules at the planted ranks)",
    "adalora": "adarank AdaLoRA, final budget = the planted parameters",
    "random": "random: the planted ranks on random modules (negative control)",
    "adalora-r1": "adarank AdaLoRA, one rank per module on average",
    "peft-adalora": "PEFT AdaLoRA, one rank per module on average (its smallest budget)",
    "lora-r1": "adarank LoRA r=1 on every module",
    "lora-r4": "adarank LoRA r=4 on every module",
}


def report(results: list[dict[str, Any]]) -> str:
    """reports/planted_rank.md: per method, recall and residual over seeds, and the residual's paired
    difference to adarank AdaLoRA at the planted budget."""
    from budget_report import mean_sd, paired  # studies/budget_report.py

    by = {(r["method"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    setups = {json.dumps(r["setup"], sort_keys=True) for r in results}
    lines = [
        "| method | seeds | final params / planted | recall | site recall | residual | Δ residual vs AdaLoRA | "
        "recall by seed | commit by seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, label in LABELS.items():
        done = [by[(method, s)] for s in seeds if (method, s) in by]
        if not done:
            continue
        common = [s for s in seeds if (method, s) in by and ("adalora", s) in by and method != "adalora"]
        diffs = [by[(method, s)]["residual"] - by[("adalora", s)]["residual"] for s in common]
        size = mean_sd([r["final_params"] / r["budget_params"] for r in done], digits=2)
        lines.append(
            f"| {label} | {len(done)} | {size} | {mean_sd([r['recall'] for r in done])} | "
            f"{mean_sd([r['site_recall'] for r in done])} | {mean_sd([r['residual'] for r in done], digits=4)} | "
            f"{paired(diffs) if diffs else ''} | {' '.join(format(r['recall'], '.3f') for r in done)} | "
            f"{' '.join(r['commit'] for r in done)} |"
        )
    plants = []
    for seed in seeds:
        if ("adalora", seed) in by:
            row = by[("adalora", seed)]
            planted = ", ".join(f"{n.removeprefix('encoder.layer.')}: {r}" for n, r in row["planted"].items())
            found = ", ".join(f"{n.removeprefix('encoder.layer.')}: {r}" for n, r in sorted(row["found"].items()))
            plants.append(f"- seed {seed}: planted {planted}; AdaLoRA found {found}")
    return "\n".join(
        [
            "| setting | value |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in json.loads(sorted(setups)[0]).items()),
            f"| commits | {', '.join(sorted({r['commit'] for r in results}))} |",
            "" if len(setups) == 1 else "(several setups in one file: the table mixes them)",
            "",
            *lines,
            "",
            "Recall = Σ_m min(found_m, planted_m) / Σ planted; residual = the student's hidden-state matching",
            "loss on held-out text / the untrained base's (0 = matched the teacher). Δ = method − adarank AdaLoRA,",
            "paired by seed, mean [95% t-interval]; * = the interval excludes 0. For LoRA on every module recall",
            "is 1 or the share of planted modules by construction (it adapts everything at a fixed rank): read its",
            "residual, at its larger budget.",
            "",
            *plants,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "minilm"), default="tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--steps", type=int, default=Setup.steps)
    parser.add_argument("--learning-rate", type=float, default=Setup.learning_rate)
    parser.add_argument("--ratio", type=float, default=Setup.ratio)
    parser.add_argument("--variant", default="base", help="a name for --set's options, recorded with each run")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        dest="options",
        metavar="KEY=VALUE",
        help="options for adarank's AdaLoRA: budget.KEY=VALUE, importance.KEY=VALUE, adapter.orth_weight=W, "
        "adapter.init=I, adapter.init_batches=N",
    )
    parser.add_argument("--out", type=Path, help="JSONL file: one line per run; runs already in it are skipped")
    parser.add_argument("--report", type=Path, help="print the Markdown tables of this JSONL file and exit")
    args = parser.parse_args()
    if args.report:
        print(report([json.loads(line) for line in args.report.read_text().splitlines() if line.strip()]))
        return
    setup = Setup(model=args.model, steps=args.steps, learning_rate=args.learning_rate, ratio=args.ratio)
    setup = with_options(replace(setup, variant=args.variant), args.options)
    print(json.dumps(asdict(setup)))
    done = set()
    if args.out and args.out.is_file():
        done = {(r["seed"], r["method"]) for r in map(json.loads, args.out.read_text().splitlines())}
    for seed in args.seeds:
        for method in args.methods:
            if (seed, method) in done:
                continue
            result = {**run(setup, seed, method), "setup": asdict(setup), "commit": commit()}
            print(json.dumps(result), flush=True)
            if args.out:
                with args.out.open("a") as file:
                    file.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
