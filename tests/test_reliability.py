"""Faults: accumulation gives the same masks, an fp16 overflow never reaches the scores, a bf16 base
trains with fp32 adapters, sharded-gradient setups are refused, and malformed configs and adapters
(fuzzed) give clear errors without tracebacks from deep inside torch or touching the files."""

from __future__ import annotations

import json
import math
import os
import random
import re
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_bert
from huggingface_hub.constants import HF_HUB_CACHE
from omegaconf import ListConfig, OmegaConf
from test_export import BASE, train_tiny
from test_resume import BUDGET, Masks
from test_trainer import _args, _dataset

from adarank import AdaRankCallback, AdaRankTrainer, BudgetConfig, ConfigError, RankAllocator, inject_adapters
from adarank.checks import VERBATIM_KEYS, load_config, validate
from adarank.config import IntrinsicDimRunConfig, schema_keys
from adarank.config.keys import _schema_fields
from adarank.core.export import ExportError, export_native, load_adapter
from adarank.core.importance import triplet_scores
from adarank.io.assets import missing_model_packages
from adarank.training.callback import check_unsharded


def _masks_for(batch: int, accum: int, tmp_path: Path) -> dict:
    model = tiny_bert()
    adapters = inject_adapters(model, ["all-linear"], rank=4, alpha=8, seed=0, modules_to_save=["classifier"])
    allocator = RankAllocator(adapters, BUDGET)
    masks = Masks(allocator)
    AdaRankTrainer(
        model=model,
        args=_args(tmp_path / f"{batch}x{accum}", max_steps=24, per_device_train_batch_size=batch,
                   gradient_accumulation_steps=accum, learning_rate=5e-3, max_grad_norm=1.0),
        train_dataset=_dataset(32 * 24),
        callbacks=[AdaRankCallback(allocator), masks],
        singular_lr_multiplier=10,
    ).train()  # fmt: skip
    return masks.events


def test_accumulation_gives_the_same_masks_at_every_allocation_step(tmp_path: Path) -> None:
    full, accumulated = _masks_for(32, 1, tmp_path), _masks_for(8, 4, tmp_path)
    assert sorted(full) == [6, 8, 10, 12, 14, 16, 18]
    assert accumulated == full


def test_fp16_overflow_step_never_reaches_the_scores() -> None:
    model = tiny_bert()
    adapters = inject_adapters(model, ["query", "value"], rank=3, alpha=6, seed=0, modules_to_save=["classifier"])
    allocator = RankAllocator(adapters, BudgetConfig(init_rank=3, target_rank=2, t_init=2, t_final=2,
                                                     mask_interval=1), total_steps=10)  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ids = torch.randint(3, 100, (8, 12), generator=torch.Generator().manual_seed(0))
    before = None
    for step in range(1, 11):
        loss = model(input_ids=ids, labels=(ids[:, 0] > 50).long()).loss
        scaler.scale(loss).backward()
        if step == 5:  # an overflow in one adapter's gradient
            next(iter(adapters.values())).singular_values.grad[0] = float("inf")
            before = {n: {k: v.clone() for k, v in s.items()} for n, s in allocator.scores.items()}
        scaler.unscale_(optimizer)  # scores must see unscaled gradients
        scaler.step(optimizer)  # skipped at step 5
        scaler.update()
        allocator.step(step, optimizer)
        if step == 5:
            after = allocator.scores
            assert all(torch.equal(after[n][k], v) for n, s in before.items() for k, v in s.items())
        optimizer.zero_grad()
    assert allocator.skipped_steps == 1 and scaler.get_scale() == 2.0**9  # the scaler backed off once
    assert all(torch.isfinite(triplet_scores(s)).all() for s in allocator.scores.values())
    allocator.check_finished()


def test_bf16_base_with_fp32_adapters_trains_and_scores() -> None:
    model = tiny_bert().to(torch.bfloat16)
    adapters = inject_adapters(model, ["all-linear"], rank=3, alpha=6, seed=0, modules_to_save=["classifier"])
    assert all(p.dtype == torch.float32 for a in adapters.values() for p in a.parameters() if p.requires_grad)
    allocator = RankAllocator(adapters, BudgetConfig(init_rank=3, target_rank=2, t_init=1, t_final=1,
                                                     mask_interval=1), total_steps=4)  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(3, 100, (8, 12), generator=torch.Generator().manual_seed(0))
    for step in range(1, 5):
        out = model(input_ids=ids, labels=(ids[:, 0] > 50).long())
        assert out.logits.dtype == torch.bfloat16
        out.loss.backward()
        optimizer.step()
        allocator.step(step, optimizer)
        optimizer.zero_grad()
    allocator.check_finished()
    assert all(v.dtype == torch.float32 for s in allocator.scores.values() for v in s.values())
    assert sum(allocator.ranks().values()) == 2 * len(adapters)


def test_nan_scores_fail_naming_the_module() -> None:
    model = tiny_bert()
    adapters = inject_adapters(model, ["query"], rank=2, alpha=2, seed=0)
    allocator = RankAllocator(adapters, BudgetConfig(init_rank=2, target_rank=1, t_init=1, t_final=1,
                                                     mask_interval=1), total_steps=4)  # fmt: skip
    model(input_ids=torch.ones(2, 4, dtype=torch.long), labels=torch.zeros(2, dtype=torch.long)).loss.backward()
    allocator.step(1)
    name = next(iter(adapters))
    allocator.scores[name]["singular_values.sensitivity"][0] = float("nan")
    with pytest.raises(FloatingPointError, match=f"importance scores of {name.replace('.', '[.]')} are not finite"):
        allocator.step(2)


def _trainer_args(**fields: object) -> SimpleNamespace:
    base = {"fsdp": "", "fsdp_config": {"version": 2}, "deepspeed": None, "use_cpu": False, "save_strategy": "no"}
    return SimpleNamespace(**{**base, **fields})


@pytest.mark.parametrize(
    ("setting", "cuda", "message"),
    [
        ({"deepspeed": "ds_config.json"}, True, "does not support DeepSpeed ZeRO"),
        ({"fsdp": "full_shard", "fsdp_config": {"version": 1}}, True, "FSDP2 only, not FSDP version 1"),
        ({"fsdp": "full_shard", "use_cpu": True}, False, "GPUs only: on CPU .* FSDP silently off"),
        ({"fsdp": "full_shard"}, False, "GPUs only"),
        ({"fsdp": "full_shard", "save_strategy": "steps"}, True, "not written under the Trainer's FSDP2"),
    ],
)
def test_trainer_setups_adarank_cannot_run_are_refused(setting: dict, cuda: bool, message: str, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    with pytest.raises(RuntimeError, match=message) as refused:
        check_unsharded(_trainer_args(**setting))
    if "fsdp" in setting:
        assert "distributed.strategy=fsdp2" in str(refused.value) or "version" in str(refused.value)


def test_trainer_fsdp2_on_gpu_and_plain_runs_pass(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_unsharded(_trainer_args(fsdp="full_shard"))  # FSDP2 on GPUs without checkpoints
    check_unsharded(_trainer_args())  # no FSDP at all
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_unsharded(_trainer_args(fsdp=[]))


# ---- fuzzing -----------------------------------------------------------------------------------

VALUES = ["", "x", "-1", "0", "1e400", "nan", "inf", "-inf", "[1,2]", "{a: 1}", "null", "true", "9" * 30,
          "0.5", "[]", "'", "{", "]]", "\x00", "é", "1.0e-30"]  # fmt: skip


def _fuzz_configs(count: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(1234)
    keys = schema_keys()
    cases = []
    for i in range(count):
        kind = i % 3
        if kind == 0:  # overrides with hostile values
            cases.append(("", [f"{rng.choice(keys)}={rng.choice(VALUES)}" for _ in range(rng.randint(1, 4))]))
        elif kind == 1:  # random bytes as a YAML file
            cases.append((bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))).decode("latin-1"), []))
        else:  # structurally wrong YAML
            key = rng.choice(keys).split(".")
            value = rng.choice(["[1, 2]", "{deep: {er: 1}}", "- a\n- b", "1e999", ".nan", "!!binary aGk=", "~"])
            cases.append(("\n".join(f"{'  ' * d}{k}:" for d, k in enumerate(key)) + f" {value}\n", []))
    return cases


# ---- the expected outcome of a fuzzed case, derived from the case alone --------------------------
# What the schema's types accept (a number where a number goes, null only for an optional key, ...) and the
# ranges, choices and cross-key rules the key table documents (docs/configuration.md, `adarank train --help`),
# judged here without adarank's validate(): a case is refused iff this finds a fault, and the refusal must name
# a key at fault (or the file). Issue 14's old test counted the outcomes after the fact, so it could not fail;
# the counts it then pinned (FUZZ_REFUSED, FUZZ_ACCEPTED) moved with every new key and said nothing of any case.

_BAD = object()  # a value the key's type refuses
_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*")


def _coerce(kind: object, value: object) -> object:
    """The value a key of annotated type ``kind`` holds when given the parsed YAML ``value``, or _BAD."""
    optional = typing.get_origin(kind) is not list and type(None) in typing.get_args(kind)
    base = next(a for a in typing.get_args(kind) if a is not type(None)) if optional else kind
    if value is None:
        return None if optional else _BAD
    if typing.get_origin(base) is list:  # a single text means a one-item list; items are texts
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
            return [str(v) for v in value]
        return _BAD
    if not isinstance(value, str | int | float):  # lists, mappings, bytes (!!binary)
        return _BAD
    if base is bool:
        return value if isinstance(value, bool) else _BAD
    if base is str:
        return str(value)
    if isinstance(value, bool):
        return _BAD
    if base is int:
        if isinstance(value, int):
            return value
        return int(value) if isinstance(value, str) and _INT_TEXT.fullmatch(value) else _BAD
    try:  # float: a number, or a text float() reads (nan and inf included: the finite check refuses them)
        return float(value)
    except ValueError:
        return _BAD


def _steps(value: float, total: int) -> int:
    return round(value * total) if value < 1 else int(value)


def _is_count(text: str) -> bool:
    """A parameter budget as the key table writes it: a positive count (`150000`, `150k`, `0.3M`) or `p%`."""
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kmb%]?)\s*", text.lower().replace("_", "").replace(",", ""))
    if not match:
        return False
    try:
        number = float(match[1])
    except ValueError:
        return False
    return math.isfinite(number) and number > 0 and (match[2] != "%" or number <= 100)


def _names_a_model(name: str) -> bool:
    """model.name_or_path: empty or an embedded model (its package installed), a folder, or a hub id that is
    in the local cache (the test runs offline: conftest sets HF_HUB_OFFLINE)."""
    if name in ("", "minilm", "smollm2"):
        return not missing_model_packages(name, "")
    if Path(name).expanduser().is_dir():
        return True
    snapshots = Path(HF_HUB_CACHE) / f"models--{name.replace('/', '--')}" / "snapshots"
    return _looks_like_hub_id(name) and snapshots.is_dir() and any(snapshots.iterdir())


def _looks_like_hub_id(name: str) -> bool:
    """`org/name` or `name` (letters, digits, `_.-`, not starting with a symbol), not written as a path."""
    return not name.startswith(("/", "./", "../", "~")) and bool(_HUB_ID.fullmatch(name))


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_SFT_KEYS = ("prompt_field", "response_field", "prompt_template", "messages_field", "chat_template",
             "max_answer_tokens")  # fmt: skip


def _faults(c: dict[str, object]) -> set[str]:
    """The keys at fault in the merged config ``c`` (dotted key -> value). Fuzzed values never make a valid
    data.format other than classification, so the generation-only rules reduce to "not set"."""
    out = set()
    for key, value in c.items():  # numbers: finite floats, ints that fit 32 bits
        if isinstance(value, float) and not math.isfinite(value):
            out.add(key)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**31 - 1:
            out.add(key)
    if out:
        return out

    def need(ok: bool, *keys: str) -> None:
        if not ok:
            out.update(keys)

    def choice(key: str, allowed: tuple[str | None, ...]) -> None:
        need(c[key] in allowed, key)

    def at_least(key: str, low: int, optional: bool = False) -> None:
        need((optional and c[key] is None) or c[key] >= low, key)  # type: ignore[operator]

    def fraction(key: str) -> bool:
        return 0 <= c[key] < 1  # type: ignore[operator]

    assert c["data.format"] not in ("generation", "language_modeling"), "the fuzzer draws no such value"
    # budget and schedule
    choice("budget.schedule", ("cubic", "linear", "constant"))
    choice("budget.selection", ("per_param", "prefix"))
    at_least("budget.init_rank", 1)
    at_least("budget.target_rank", 0)
    at_least("budget.mask_interval", 1)
    at_least("train.max_steps", 1)
    by_params = c["budget.target_params"] is not None
    need(by_params or c["budget.target_rank"] <= c["budget.init_rank"], "budget.target_rank", "budget.init_rank")
    constant_ok = by_params or c["budget.schedule"] != "constant" or c["budget.target_rank"] == c["budget.init_rank"]
    need(constant_ok, "budget.schedule", "budget.target_rank", "budget.init_rank")
    need(not by_params or _is_count(str(c["budget.target_params"])), "budget.target_params")
    for key in ("budget.t_init", "budget.t_final"):
        need(c[key] >= 0 and (c[key] < 1 or c[key] == int(c[key])), key)  # type: ignore[operator,arg-type]
    if not out and c["budget.schedule"] != "constant":  # the decay needs steps between warm-up and final phase
        total = c["train.max_steps"]
        spans = _steps(c["budget.t_init"], total) + _steps(c["budget.t_final"], total)  # type: ignore[arg-type]
        need(spans < total, "t_init + t_final")  # type: ignore[operator]
    # importance, adapter
    need(fraction("importance.beta_sensitivity"), "importance.beta_sensitivity")
    need(fraction("importance.beta_uncertainty"), "importance.beta_uncertainty")
    choice("importance.score", ("sensitivity_uncertainty", "sensitivity"))
    need(c["adapter.alpha"] > 0, "adapter.alpha")  # type: ignore[operator]
    need(fraction("adapter.dropout"), "adapter.dropout")
    need(c["adapter.orth_weight"] >= 0, "adapter.orth_weight")  # type: ignore[operator]
    choice("adapter.init", ("orthonormal", "gradient"))
    at_least("adapter.init_batches", 1)
    need(bool(c["adapter.target_modules"]) or c["data.format"] == "classification", "adapter.target_modules")
    # train
    for key in ("train.batch_size", "train.grad_accum_steps", "train.eval_batch_size"):
        at_least(key, 1)
    at_least("train.eval_steps", 1, optional=True)
    at_least("train.save_steps", 1, optional=True)
    need(c["train.learning_rate"] > 0, "train.learning_rate")  # type: ignore[operator]
    need(c["train.singular_lr_multiplier"] > 0, "train.singular_lr_multiplier")  # type: ignore[operator]
    need(fraction("train.warmup_ratio"), "train.warmup_ratio")
    need(c["train.weight_decay"] >= 0, "train.weight_decay")  # type: ignore[operator]  # AdamW's own rule
    # data (the embedded task is a hub-id-like name, so a subset on it is not refused here either)
    dataset = str(c["data.dataset"])
    need(dataset in ("rotten_tomatoes", "bbc_news") or _looks_like_hub_id(dataset), "data.dataset")
    need(c["data.subset"] is None or _looks_like_hub_id(dataset), "data.subset")
    choice("data.format", ("classification", "generation", "language_modeling"))
    at_least("data.max_length", 8)
    at_least("data.max_train_samples", 1, optional=True)
    at_least("data.max_eval_samples", 1, optional=True)
    at_least("data.split_seed", 0)
    for key in ("data.text_field", "data.label_field"):
        need(bool(str(c[key]).strip()), key)
    fractions_ok = fraction("data.validation_fraction") and fraction("data.test_fraction")
    fractions_ok = fractions_ok and c["data.validation_fraction"] + c["data.test_fraction"] < 1  # type: ignore[operator]
    need(fractions_ok, "data.validation_fraction", "data.test_fraction")
    need(c["data.text_pair_field"] is None or c["data.format"] == "classification", "data.text_pair_field")
    for key in _SFT_KEYS:
        need(c[f"data.{key}"] is None or c["data.format"] == "generation", f"data.{key}")
    need(not c["data.packing"] or c["data.format"] == "generation", "data.packing")
    names = c["data.label_names"]
    if names is not None:
        need(len(set(names)) == len(names) and len(names) >= 2, "data.label_names")  # type: ignore[arg-type]
    # model, run, wandb, strategy
    need(_names_a_model(str(c["model.name_or_path"])), "model.name_or_path")
    gguf_ok = not c["model.gguf_file"] or not missing_model_packages(str(c["model.name_or_path"]), "x")
    need(gguf_ok, "model.gguf_file")
    choice("model.dtype", ("float32", "bfloat16", "float16"))
    choice("model.quantization", ("none", "int8", "nf4"))
    # every case loads with intrinsic-dim's schema (below), which refuses a quantized base
    need(c["model.quantization"] not in ("int8", "nf4"), "model.quantization")
    need(c["adapter.ranks_from"] is None, "adapter.ranks_from")  # no fuzzed value names a finished run
    need(c["resume"] is None, "resume")  # no fuzzed value names a run with checkpoints
    choice("wandb.mode", (None, "online", "offline", "disabled"))
    choice("distributed.strategy", ("ddp", "fsdp2"))
    need(c["distributed.strategy"] != "fsdp2" or "WORLD_SIZE" in os.environ, "distributed.strategy")
    # `adarank intrinsic-dim`'s own section
    need(1 <= c["intrinsic_dim.min_dim"] <= c["intrinsic_dim.max_dim"], "intrinsic_dim.min_dim")  # type: ignore[operator]
    need(c["intrinsic_dim.grid_factor"] > 1, "intrinsic_dim.grid_factor")  # type: ignore[operator]
    need(0 < c["intrinsic_dim.fraction"] <= 1, "intrinsic_dim.fraction")  # type: ignore[operator]
    need(_finite_number(c["intrinsic_dim.reference"]), "intrinsic_dim.reference")  # no fuzzed run directory
    need(c["intrinsic_dim.floor_run"] is None, "intrinsic_dim.floor_run")
    choice("intrinsic_dim.head", ("subspace", "fixed"))
    for key in ("intrinsic_dim.learning_rate", "intrinsic_dim.reference_learning_rate"):
        need(c[key] > 0, key)  # type: ignore[operator]
    at_least("intrinsic_dim.nonzeros", 1)
    at_least("intrinsic_dim.seeds", 1)
    choice("intrinsic_dim.metric", (None, "accuracy", "loss"))
    return out


def _finite_number(value: object) -> bool:
    """intrinsic_dim.reference: null or a finite number (a run directory is checked elsewhere)."""
    if value is None:
        return True
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except ValueError:
        return False


def _leaves(node: object, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), node)]


def _expected(text: str, overrides: list[str], path: Path | None) -> set[str]:
    """What a refusal of this case must name (one of them: the file, or a key at fault); empty = accepted."""
    fields = _schema_fields()
    merged = {key: default for key, (_, default, _) in fields.items()}
    given: list[tuple[str, object]] = []
    if path is not None:
        try:
            loaded = OmegaConf.to_container(OmegaConf.load(path))  # YAML as OmegaConf reads it (1e999 is a float)
        except Exception:  # not YAML, or a scalar at the top  # noqa: BLE001
            return {str(path)}
        if not isinstance(loaded, dict) or any(k not in fields for k, _ in _leaves(loaded)):
            return {str(path)}  # not a mapping, or an unknown key / a section given a value
        given += _leaves(loaded)
    faults = set()
    for item in overrides:
        key, _, raw = item.partition("=")
        if key in VERBATIM_KEYS:  # templates are taken as written
            given.append((key, raw))
            continue
        try:
            value = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
        except Exception:  # not YAML  # noqa: BLE001
            faults.add(key)
            continue
        for part in key.split("."):
            value = value[part]  # type: ignore[index]
        given.append((key, value))
    for key, value in given:
        coerced = _coerce(fields[key][2], value)
        if coerced is _BAD:
            faults.add(key)
        else:
            merged[key] = coerced
    faults |= _faults(merged)
    return faults | {str(path)} if faults and path is not None else faults


NUMBER_VALUES = ["-1", "0", "1e400", "nan", "inf", "-inf", "0.5", "9" * 30, "1.0e-30", "1.5"]


def _numeric_sweep() -> list[tuple[str, list[str]]]:
    """Every numeric key, and each key whose text is a number, alone with every hostile number: a broken
    range check cannot hide here."""
    numeric = [k for k, (_, default, _) in _schema_fields().items() if type(default) in (int, float)]
    numeric += ["budget.target_params", "intrinsic_dim.reference"]
    return [("", [f"{key}={value}"]) for key in numeric for value in NUMBER_VALUES]


def test_fuzzed_configs_are_rejected_with_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each case carries its own expected outcome (``_expected``): a case with a fault is refused with a
    message naming a key at fault (or its file); a case without one is accepted, every override in effect."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id is then usable only from the cache
    outcomes = []
    for index, (text, overrides) in enumerate(_fuzz_configs(300) + _numeric_sweep()):
        path = None
        if text:
            path = tmp_path / f"c{index}.yaml"
            path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
        names = _expected(text, overrides, path)
        outcomes.append(bool(names))
        try:
            # every command's keys: the fuzzer draws `adarank intrinsic-dim`'s own section too
            cfg = load_config(path, [*overrides, f"output_dir={tmp_path / 'out'}"], schema=IntrinsicDimRunConfig)
        except ConfigError as err:
            assert names, f"refused a valid case: {overrides or text!r}: {err.problems}"
            assert err.problems and all(isinstance(p, str) and p for p in err.problems)
            assert any(name in problem for problem in err.problems for name in names), (overrides, names, err.problems)
            continue
        assert not names, f"accepted a case with a fault in {sorted(names)}: {overrides or text!r}"
        # accepted: a config that validates, and in which every override took effect (none dropped)
        assert validate(cfg) == []
        structured = OmegaConf.structured(cfg)
        last = {o.partition("=")[0].strip(): o for o in [*overrides, f"output_dir={tmp_path / 'out'}"]}
        for key, item in last.items():
            if key in VERBATIM_KEYS:  # templates are kept as written, never parsed as YAML
                raw = item.partition("=")[2]
                got = OmegaConf.select(structured, key)
                assert got == (raw.replace("\\n", "\n").replace("\\t", "\t"))
                continue
            given = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
            for part in key.split("."):
                given = given[part]
            if not isinstance(given, (dict, list)):
                got = OmegaConf.select(structured, key)
                if isinstance(got, ListConfig):  # a single string where a list is expected is wrapped in one
                    assert list(got) == [given], (item, got)
                    continue
                assert str(got).lower() == str(given).lower() or float(got) == float(given), (item, got)
    assert True in outcomes and False in outcomes, "the corpus holds both valid and invalid cases"
    assert not (tmp_path / "out").exists(), "validation writes nothing"


def _corruptions(good: Path, rng: random.Random) -> list[tuple[str, dict[str, bytes]]]:
    meta = json.loads((good / "adarank_adapter.json").read_text())
    tensors = (good / "adapter.safetensors").read_bytes()
    name = next(n for n, r in meta["ranks"].items() if r)
    from safetensors.torch import load_file, save_file

    def tensors_with(change) -> bytes:
        data = load_file(str(good / "adapter.safetensors"))
        change(data)
        out = good.parent / "tmp.safetensors"
        save_file(data, str(out))
        return out.read_bytes()

    meta_text = json.dumps(meta).encode()
    nan, ones = math.nan, torch.ones(3)

    def meta_with(**changes) -> dict[str, bytes]:
        return {"adarank_adapter.json": json.dumps({**meta, **changes}).encode()}

    def rank_of(value) -> dict[str, bytes]:
        return meta_with(ranks={**meta["ranks"], name: value})

    cases = [
        ("random bytes as tensors", {"adapter.safetensors": bytes(rng.getrandbits(8) for _ in range(500))}),
        ("truncated tensors", {"adapter.safetensors": tensors[: len(tensors) // 2]}),
        ("random bytes as JSON", {"adarank_adapter.json": bytes(rng.getrandbits(8) for _ in range(100))}),
        ("JSON list", {"adarank_adapter.json": b"[1, 2, 3]"}),
        ("rank as text", rank_of("two")),
        ("negative rank", rank_of(-1)),
        ("huge rank", rank_of(10**12)),
        ("newer format", meta_with(format_version=2)),
        ("format as text", meta_with(format_version="1")),
        ("missing keys", {"adarank_adapter.json": b'{"format_version": 1}'}),
        ("NaN in a tensor", {"adapter.safetensors": tensors_with(lambda d: d[f"{name}.singular_values"].fill_(nan))}),
        ("wrong shape", {"adapter.safetensors": tensors_with(lambda d: d.update({f"{name}.left_vectors": ones}))}),
        ("missing tensor", {"adapter.safetensors": tensors_with(lambda d: d.pop(f"{name}.right_vectors"))}),
        ("shape list wrong", meta_with(shapes={**meta["shapes"], name: [1]})),
        ("scaling as text", meta_with(scaling={**meta["scaling"], name: "big"})),
        ("valid JSON, empty tensors", {"adapter.safetensors": b"", "adarank_adapter.json": meta_text}),
    ]  # fmt: skip
    return cases


# Each corruption and the message it must give (issue 14: a count taken after pytest.raises could not fail).
EXPECTED_ADAPTER_ERRORS = {
    "random bytes as tensors": "is corrupt or truncated",
    "truncated tensors": "is corrupt or truncated",
    "random bytes as JSON": "is not valid JSON",
    "JSON list": "lacks format_version, ranks, scaling, shapes, trained_parameters",
    "rank as text": "rank of `.*` must be a whole number >= 0, got 'two'",
    "negative rank": "rank of `.*` must be a whole number >= 0, got -1",
    "huge rank": "has rank 1000000000000 > min",
    "newer format": "has format version 2; this adarank .* reads up to 1",
    "format as text": "has format version '1'",
    "missing keys": "lacks format_version, ranks, scaling, shapes, trained_parameters",
    "NaN in a tensor": "holds NaN or inf",
    "wrong shape": "left_vectors` should have shape",
    "missing tensor": "right_vectors` should have shape",
    "shape list wrong": r"shape of `.*` must be \[d_out, d_in\], got \[1\]",
    "scaling as text": "or no numeric scaling",
    "valid JSON, empty tensors": "is corrupt or truncated",
}


def test_fuzzed_adapters_are_rejected_without_touching_files(tmp_path: Path) -> None:
    model, _ = train_tiny(tiny_bert)
    good = export_native(model, tmp_path / "good", BASE)
    cases = _corruptions(good, random.Random(7))
    assert [label for label, _ in cases] == list(EXPECTED_ADAPTER_ERRORS)
    for index, (label, files) in enumerate(cases):
        folder = tmp_path / f"bad{index}"
        folder.mkdir()
        for file in ("adarank_adapter.json", "adapter.safetensors"):
            (folder / file).write_bytes(files.get(file, (good / file).read_bytes()))
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        fresh = tiny_bert()
        weights = {k: v.clone() for k, v in fresh.state_dict().items()}
        with pytest.raises(ExportError, match=EXPECTED_ADAPTER_ERRORS[label]):
            load_adapter(fresh, folder)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, label
        assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in weights.items()), f"{label}: model changed"
