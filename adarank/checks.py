"""Loading and checking a run's configuration: defaults <- YAML (with includes) <- ``key=value``
overrides, merged with OmegaConf into the typed schema of ``adarank.config``, then every problem found
at once: the schema's own rules, the files it names (data, model folders, run directories, checkpoints)
and, on request, the model's shapes on a meta-device skeleton. Above the schema: it reads files and
models; the schema imports nothing of the package but the embedded assets' names."""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from adarank.analysis.intrinsic import intrinsic_dim_problems
from adarank.config import (
    DTYPES,
    ENGINE_STATE,
    INCLUDE_KEY,
    INITS,
    RESUME_MARKER,
    SCORES,
    STRATEGIES,
    WANDB_MODES,
    ConfigError,
    IntrinsicDimRunConfig,
    ModelConfig,
    RunConfig,
    list_keys,
    schema_keys,
)
from adarank.config.keys import _schema_fields, _type_hint
from adarank.core.budget import budget_problems
from adarank.data.checks import data_problems
from adarank.io.assets import EMBEDDED_MODELS, missing_model_packages
from adarank.io.hub import is_hub_id, looks_local, unreachable_problem
from adarank.io.quantize import QUANTIZATIONS, backend_problem
from adarank.io.rundir import read_ranks
from adarank.training.setup import describe


def _wrap_single_strings(layer: Any) -> None:
    """In a parsed YAML layer or override (modified in place): a plain string under a list key
    becomes a one-item list, so `adapter.target_modules=all-linear` means [all-linear] (issue 14)."""
    for key in list_keys():
        value = OmegaConf.select(layer, key, default=None)
        if isinstance(value, str):
            OmegaConf.update(layer, key, [value], merge=False)


def _flatten(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        out: list[str] = []
        for key, value in node.items():
            out += _flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
        return out
    return [prefix.rstrip(".")]


def _unknown_key_problems(keys: list[str], source: str, schema: type = RunConfig) -> list[str]:
    valid = schema_keys(schema)
    sections = {k.split(".")[0] for k in valid if "." in k}
    problems = []
    for key in keys:
        if key in valid:
            continue
        if key.split(".")[0] == OWN_SECTION:
            problems.append(f"{source}: `{key}` is a key of `adarank intrinsic-dim`, which this command does not read.")
            continue
        if key in sections:
            problems.append(f"{source}: `{key}` is a section; set one of its keys, e.g. `{key}.<name>=...`.")
            continue
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f" Did you mean `{close[0]}`?" if close else " Run `adarank train --help` for the keys."
        problems.append(f"{source}: unknown key `{key}`.{hint}")
    return problems


VERBATIM_KEYS = ("data.prompt_template", "data.chat_template")
"""Keys whose command-line value is taken as written, not parsed as YAML (`{field}`, `: ` and quotes are
template syntax); `\\n` means a line break there, as in a YAML config's double-quoted "\\n"."""


def _verbatim(key: str, value: str) -> DictConfig:
    """A one-key config holding ``value`` as a string, `\\n` and `\\t` turned into a line break and a tab."""
    value = value.replace("\\n", "\n").replace("\\t", "\t")
    node: Any = value
    for part in reversed(key.split(".")):
        node = {part: node}
    created = OmegaConf.create(node, flags={"allow_objects": False})
    assert isinstance(created, DictConfig)
    return created


def _yaml_hint(item: str) -> str:
    """How to fix an override whose list value YAML cannot read: brackets, braces or commas inside an
    item (a regex such as ``re:layers\\.(2[1-9])``) end or split YAML's flow list unless quoted."""
    value = item.partition("=")[2].strip()
    if not value.startswith("["):
        return ""
    return (
        " Inside [...], an item with brackets, braces or commas (a regex such as re:layers\\.(2[1-9])) must be in "
        "single quotes, backslashes kept: e.g. adapter.target_modules=['re:layers\\.(2[1-9])\\.v_proj', q_proj] "
        "(and the whole override in double quotes for the shell)."
    )


OWN_SECTION = "intrinsic_dim"
"""`adarank intrinsic-dim`'s section (``IntrinsicDimRunConfig``): skipped in a YAML file read for another
command (a file may serve both, and adarank 0.1 wrote it into every run's config.yaml)."""


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    check_model: bool = False,
    schema: type[RunConfig] = RunConfig,
) -> RunConfig:
    """Merge defaults <- YAML at ``path`` <- ``key=value`` overrides, validate, return a RunConfig (an
    ``IntrinsicDimRunConfig`` with ``schema=IntrinsicDimRunConfig``, for `adarank intrinsic-dim`).

    Every problem is found in one pass: a value of the wrong type is reported and left out, and the
    rest is still validated. With ``check_model``, the target modules and the budget are also checked
    against the model's shapes on a meta-device skeleton (no weights loaded; imports transformers).

    Raises:
        ConfigError: listing every problem found (missing file, bad YAML, unknown keys, wrong types,
            impossible values, modules that match nothing), each with how to fix it.
    """
    merged = OmegaConf.structured(schema)
    problems: list[str] = []
    if path is not None:
        for source, layer in _read_layers(Path(path), (), problems):
            if schema is RunConfig and isinstance(layer, DictConfig) and OWN_SECTION in layer:
                layer.pop(OWN_SECTION)
            bad = _unknown_key_problems(_flatten(OmegaConf.to_container(layer)), source, schema)
            problems += bad
            if not bad:
                _wrap_single_strings(layer)
                merged = _merge_or_report(merged, layer, source, problems)
    for item in overrides or []:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            problems.append(f"override `{item}` is not of the form key=value, e.g. `budget.target_rank=4`.")
            continue
        bad = _unknown_key_problems([key.strip()], "command line", schema)
        problems += bad
        if not bad and key.strip() in VERBATIM_KEYS:  # templates: braces, colons and quotes are their own
            parsed = _verbatim(key.strip(), item.partition("=")[2])
            merged = _merge_or_report(merged, parsed, f"`{item}`", problems)
            continue
        if not bad:
            try:
                parsed = OmegaConf.from_dotlist([item])
            except Exception as err:  # yaml scanner/reader errors on hostile text
                reason = str(err).splitlines()[0]
                problems.append(f"`{item}`: the value is not valid YAML ({reason}).{_yaml_hint(item)}")
                continue
            leaf = OmegaConf.select(parsed, key.strip())
            if _schema_fields()[key.strip()][2] is bool and not isinstance(leaf, bool):
                problems.append(f"`{item}`: {key.strip()} is true or false, not `{leaf}`.")
                continue
            _wrap_single_strings(parsed)
            merged = _merge_or_report(merged, parsed, f"`{item}`", problems)
    cfg = OmegaConf.to_object(merged)  # the values that merged cleanly: still worth validating
    assert isinstance(cfg, RunConfig)
    found = validate(cfg)
    problems += found
    if check_model and not any(p.startswith(("model.", "data.dataset", "data.format")) for p in found):
        problems += model_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def model_problems(cfg: RunConfig) -> list[str]:
    """Problems only the model's shapes reveal (target modules that match nothing, a budget that does
    not fit them), found on a meta-device skeleton: no weights are loaded."""

    try:
        describe(cfg)
    except ConfigError as err:
        return err.problems
    return []


def _read_layers(file: Path, chain: tuple[Path, ...], problems: list[str]) -> list[tuple[str, DictConfig]]:
    """The YAML ``file`` preceded by the files it includes (`include: base.yaml` or a list, relative to
    ``file``), depth first, so later layers override earlier ones; problems are appended."""
    if not file.is_file():
        via = f" (included from {chain[-1]})" if chain else ""
        problems.append(f"config file `{file}`{via} does not exist; check the path.")
        return []
    if file.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, file.resolve()))
        problems.append(f"include cycle: {cycle}; remove one of these includes.")
        return []
    try:
        loaded = OmegaConf.load(file)
    except Exception as err:  # yaml.YAMLError and friends: report, don't crash
        problems.append(f"{file}: not valid YAML ({err}).")
        return []
    if not isinstance(loaded, DictConfig):
        problems.append(f"{file}: the top level must be a mapping of keys, not a list.")
        return []
    includes = loaded.pop(INCLUDE_KEY, None)
    if includes is None:
        includes = []
    elif isinstance(includes, str):
        includes = [includes]
    elif not all(isinstance(i, str) for i in includes):
        problems.append(f"{file}: `{INCLUDE_KEY}` must be a file name or a list of file names.")
        includes = []
    layers: list[tuple[str, DictConfig]] = []
    for name in includes:
        layers += _read_layers(file.parent / name, (*chain, file.resolve()), problems)
    return [*layers, (str(file), loaded)]


def _merge_or_report(base: Any, update: Any, source: str, problems: list[str]) -> Any:
    try:
        return OmegaConf.merge(base, update)
    except (OmegaConfBaseException, TypeError, ValueError) as err:  # TypeError: a list where a mapping goes
        key = str(getattr(err, "full_key", "") or "")
        if key in list_keys():  # OmegaConf's own text ("AnyNode is not a ListConfig ...") says nothing useful
            problems.append(f"{source}: {_type_hint(key)}")
        else:
            msg = str(err).split("\n")[0].rstrip(".")
            hint = _type_hint(key) if key else "Give a value of the type the key expects."
            problems.append(f"{source}: {msg}. {hint}")
        return base


def _number_problems(node: Any, prefix: str = "") -> list[str]:
    """Non-finite floats and integers too large to mean anything (steps, ranks, batch sizes)."""
    problems = []
    for f in fields(node):
        value = getattr(node, f.name)
        key = prefix + f.name
        if is_dataclass(value):
            problems += _number_problems(value, key + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key} ({value}) must be a finite number.")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**31 - 1:
            problems.append(f"{key} ({value}) is too large; use a value below 2**31.")
    return problems


def validate(cfg: RunConfig) -> list[str]:
    """Every problem with a merged run config that can be seen without loading the model."""
    numbers = _number_problems(cfg)
    if numbers:  # the other checks assume sane numbers
        return numbers
    problems = budget_problems(cfg.budget, cfg.train.max_steps)
    imp = cfg.importance
    for name in ("beta_sensitivity", "beta_uncertainty"):
        value = getattr(imp, name)
        if not 0 <= value < 1:
            problems.append(f"importance.{name} ({value}) must be in [0, 1), e.g. 0.85.")
    if imp.score not in SCORES:
        problems.append(f"importance.score `{imp.score}` is not one of {', '.join(SCORES)}.")
    ad = cfg.adapter
    if not ad.target_modules and cfg.data.format != "classification":
        problems.append(
            f"adapter.target_modules is empty, which trains the classification head alone, and a "
            f"{cfg.data.format} run has no head; name modules to adapt, or `all-linear`."
        )
    if ad.alpha <= 0:
        problems.append(f"adapter.alpha ({ad.alpha}) must be > 0.")
    if not 0 <= ad.dropout < 1:
        problems.append(f"adapter.dropout ({ad.dropout}) must be in [0, 1).")
    if ad.orth_weight < 0:
        problems.append(f"adapter.orth_weight ({ad.orth_weight}) must be >= 0 (0 disables it).")
    if ad.init not in INITS:
        problems.append(f"adapter.init `{ad.init}` is not one of {', '.join(INITS)}.")
    if ad.init_batches < 1:
        problems.append(f"adapter.init_batches ({ad.init_batches}) must be >= 1.")
    if ad.ranks_from is not None:
        problems += read_ranks(ad.ranks_from)[1]
    tr = cfg.train
    if tr.eval_steps is not None and tr.eval_steps < 1:
        problems.append(f"train.eval_steps ({tr.eval_steps}) must be >= 1, or null for no evaluation during training.")
    for name in ("batch_size", "grad_accum_steps", "eval_batch_size"):
        if getattr(tr, name) < 1:
            problems.append(f"train.{name} ({getattr(tr, name)}) must be >= 1.")
    if tr.learning_rate <= 0 or tr.singular_lr_multiplier <= 0:
        problems.append("train.learning_rate and train.singular_lr_multiplier must be > 0.")
    if not 0 <= tr.warmup_ratio < 1:
        problems.append(f"train.warmup_ratio ({tr.warmup_ratio}) must be in [0, 1).")
    if tr.weight_decay < 0:  # torch's AdamW refuses it, from deep inside the first training step
        problems.append(f"train.weight_decay ({tr.weight_decay}) must be >= 0.")
    problems += data_problems(cfg.data)
    problems += _model_name_problems(cfg.model)
    if cfg.wandb.mode is not None and cfg.wandb.mode not in WANDB_MODES:
        problems.append(f"wandb.mode `{cfg.wandb.mode}` is not one of {', '.join(WANDB_MODES)}.")
    problems += distributed_problems(cfg)
    problems += quantization_problems(cfg)
    if isinstance(cfg, IntrinsicDimRunConfig):
        problems += intrinsic_dim_problems(cfg.intrinsic_dim, cfg.data.format)
    if tr.save_steps is not None and tr.save_steps < 1:
        problems.append(f"train.save_steps ({tr.save_steps}) must be >= 1, or null for no checkpoints.")
    if cfg.resume is not None:
        checkpoints = [p for p in (Path(cfg.resume) / "trainer").glob("checkpoint-*") if (p / RESUME_MARKER).is_file()]
        if not checkpoints:
            problems.append(
                f"resume=`{cfg.resume}` holds no complete checkpoint (trainer/checkpoint-N with {RESUME_MARKER}); "
                "train with train.save_steps=N to write them."
            )
        elif not (max(checkpoints, key=lambda p: int(p.name.split("-")[-1])) / ENGINE_STATE).is_file():
            problems.append(
                f"resume=`{cfg.resume}`: its checkpoints were written by adarank 0.1.0 (the transformers Trainer "
                "engine, or the FSDP2 loop of that version), which this engine cannot continue; resume it with "
                "adarank 0.1.0 (`pip install adarank==0.1.0`, or a checkout of that version), or start the run again."
            )
    out = Path(cfg.output_dir)
    if (out / "metrics.json").exists() and not cfg.overwrite:
        problems.append(
            f"output_dir `{out}` already holds a finished run; choose another output_dir or pass overwrite=true."
        )
    return problems


def quantization_problems(cfg: RunConfig) -> list[str]:
    """Problems with ``model.quantization``: an unknown value, a backend not installed, and the set-ups a
    quantized base cannot serve (FSDP2 shards plain tensors; the warm start and intrinsic-dim need the
    base weights' gradient)."""
    quantization = cfg.model.quantization
    if quantization not in QUANTIZATIONS:
        return [f"model.quantization `{quantization}` is not one of {', '.join(QUANTIZATIONS)}."]
    if quantization == "none":
        return []
    problems = [p for p in [backend_problem(quantization)] if p]
    if cfg.distributed.strategy == "fsdp2":
        problems.append(
            f"model.quantization={quantization} with distributed.strategy=fsdp2: FSDP2 shards plain tensors, not "
            "quantized ones; use distributed.strategy=ddp (each process holds the quantized base) or quantization=none."
        )
    if cfg.adapter.init == "gradient":
        problems.append(
            f"model.quantization={quantization} with adapter.init=gradient: the warm start needs the base weights' "
            "gradient, which a quantized weight does not get; use adapter.init=orthonormal."
        )
    if isinstance(cfg, IntrinsicDimRunConfig):
        problems.append(
            f"model.quantization={quantization}: adarank intrinsic-dim trains random subspaces of the base weights, "
            "which a quantized base cannot; set model.quantization=none."
        )
    return problems


def distributed_problems(cfg: RunConfig) -> list[str]:
    """Problems with ``distributed.strategy`` (FSDP2 needs torchrun)."""
    strategy = cfg.distributed.strategy
    if strategy not in STRATEGIES:
        return [f"distributed.strategy `{strategy}` is not one of {', '.join(STRATEGIES)}."]
    if strategy != "fsdp2":
        return []
    problems = []
    if "WORLD_SIZE" not in os.environ:
        problems.append(
            "distributed.strategy=fsdp2 shards the model across processes: launch with "
            "`torchrun --nproc_per_node N -m adarank train ...` (N >= 1), or use the default strategy ddp."
        )
    return problems


def _model_name_problems(model: ModelConfig) -> list[str]:
    name = model.name_or_path
    problems = missing_model_packages(name, model.gguf_file)
    if model.dtype not in DTYPES:
        problems.append(f"model.dtype `{model.dtype}` is not one of {', '.join(DTYPES)}.")
    if not name or name in EMBEDDED_MODELS:
        return problems
    path = Path(name).expanduser()
    if path.is_dir():
        if model.gguf_file and not (path / model.gguf_file).is_file():
            problems.append(f"model.gguf_file `{model.gguf_file}` is not a file in `{name}`; check the name.")
    elif path.exists():
        problems.append(f"model.name_or_path `{name}` is a file; give the folder that holds config.json and weights.")
    elif looks_local(name) or not is_hub_id(name):
        problems.append(
            f"model.name_or_path `{name}` is not an existing folder; give a Hugging Face model folder "
            f"(config.json + weights), a hub id (org/name), or an embedded model: {', '.join(EMBEDDED_MODELS)}."
        )
    elif model.gguf_file:
        problems.append("model.gguf_file needs a local folder or an embedded model in model.name_or_path.")
    else:  # a hub id: out of reach and not cached is reported here too, beside any data problem
        offline = unreachable_problem("model.name_or_path", name, "model")
        problems += [offline] if offline else []
    return problems
