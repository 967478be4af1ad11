"""Typed configuration: dataclass defaults <- YAML file <- ``key=value`` overrides.

The dataclasses are the schema. ``load_config`` merges a YAML file and command-line overrides into
them with OmegaConf, reports every problem at once (unknown keys with the closest valid one, wrong
types, impossible values) and returns plain frozen dataclasses: library code never sees a
``DictConfig``.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import math
import os
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from adarank.assets import BUNDLED_DATASETS, EMBEDDED_MODELS, missing_model_packages
from adarank.hub import is_hub_id, looks_local

SCHEDULES = ("cubic", "linear", "constant")
SCORES = ("sensitivity_uncertainty", "sensitivity")
SELECTIONS = ("prefix", "per_param")
INITS = ("orthonormal", "gradient")
DATASETS = BUNDLED_DATASETS
FORMATS = ("classification", "generation", "language_modeling")
DTYPES = ("float32", "bfloat16", "float16")
INCLUDE_KEY = "include"
RESUME_MARKER = "adarank_allocator.json"  # = adarank.checkpoint.ALLOCATOR_STATE
ENGINE_STATE = "engine_state.pt"  # adarank.loop's part of a checkpoint (>= 0.2; 0.1's Trainer engine had none)
WANDB_MODES = ("online", "offline", "disabled")


class ConfigError(ValueError):
    """A user configuration is invalid; ``problems`` lists every problem, each with its fix."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "minilm"
    """Local Hugging Face folder, a hub model id (`org/name`; must be cached when offline), or an embedded
    model: `minilm` (the default; empty means it too) or `smollm2`."""
    gguf_file: str = ""
    """GGUF file inside name_or_path to load (dequantized to fp32 once, then cached); empty = none."""
    dtype: str = "float32"
    """Dtype of the frozen base weights: float32 | bfloat16 | float16. Adapters, modules trained in full
    and importance scores stay float32."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "rotten_tomatoes"
    """Task data: an embedded task (`rotten_tomatoes`, `bbc_news`), a file or glob (csv, tsv, json, jsonl,
    parquet, txt; may be .bz2/.gz/.xz/.zst), a folder written by save_to_disk, or a hub dataset id."""
    subset: str | None = None
    """Configuration (subset) of a hub dataset, e.g. `sst2` of `nyu-mll/glue`."""
    format: str = "classification"
    """`classification` (a sequence-classification head; accuracy and macro-F1), `generation` (a causal LM
    writes the label word after the text, or the responses of prompt / response pairs or chats (see
    prompt_field, messages_field); loss on the answer tokens only) or
    `language_modeling` (a causal LM on plain text packed into blocks of max_length; loss, perplexity)."""
    text_field: str = "text"
    """Column holding the text (the document, for language_modeling)."""
    text_pair_field: str | None = None
    """Column holding the second text of pair tasks (classification only); null = single texts."""
    label_field: str = "label"
    """Column holding the label: text or whole numbers."""
    label_names: list[str] | None = None
    """Label names in id order; whole-number labels index them. null = sorted labels of the train split
    (or the dataset's own class names)."""
    validation_fraction: float = 0.1
    """Share of train carved out as validation when the data has no validation split."""
    test_fraction: float = 0.1
    """Share of train carved out as test when the data has no test split."""
    split_seed: int = 20230301
    """Seed of the carving permutation; independent of `seed`, so the run seed never moves the test set."""
    group_field: str | None = None
    """Column whose groups never straddle splits when carving (e.g. the movie, the author); null = rows.
    rotten_tomatoes carves by `movie_name`."""
    max_length: int = 64
    """Tokens per example after truncation (per packed block for language_modeling)."""
    max_train_samples: int | None = None
    """Use at most this many training examples (None = all)."""
    max_eval_samples: int | None = None
    """Use at most this many validation and test examples (documents, for language_modeling) each
    (None = all)."""
    prompt_field: str | None = None
    """generation from prompt / response pairs: the column holding the prompt (or use prompt_template)."""
    response_field: str | None = None
    """generation from prompt / response pairs: the column holding the response the model learns to write
    (the label column: the label's name)."""
    prompt_template: str | None = None
    """generation: a Python format string over the data's columns that builds the prompt, e.g.
    `"Question: {question}\nAnswer:"`; the response follows after a space."""
    messages_field: str | None = None
    """generation from chat: the column holding each conversation, a list of {role, content}, rendered with
    the tokenizer's chat template; the loss covers every assistant turn."""
    chat_template: str | None = None
    """A Jinja chat template for a tokenizer without one (or to replace its own)."""
    max_answer_tokens: int | None = None
    """generation: also score exact match, generating this many tokens greedily for each prompt (short-answer
    tasks); null = loss and perplexity only (label-word tasks always score it)."""
    packing: bool = False
    """generation: pack several training examples into each row of max_length tokens (less padding);
    attention then crosses example boundaries (the loss stays on the responses)."""


@dataclass(frozen=True)
class AdapterConfig:
    target_modules: list[str] = field(default_factory=lambda: ["query", "key", "value", "attention.output.dense"])
    """Modules to adapt: name suffixes (dot-bounded), `re:<regex>` (full match) or `all-linear`; `[]` trains
    the classification head alone (a linear probe, the floor adapters must beat)."""
    alpha: float = 16.0
    """Scaling numerator: the update is multiplied by alpha / budget.init_rank."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    orth_weight: float = 0.1
    """Weight of the orthogonality penalty sum_k ||P_k^T P_k - I||^2 + ||Q_k Q_k^T - I||^2."""
    modules_to_save: list[str] = field(default_factory=list)
    """Extra modules trained in full (the new classification head is always trained)."""
    init: str = "orthonormal"
    """How P and Q start (lambda starts at 0 either way, so the model is unchanged at step 0): orthonormal (random
    semi-orthonormal) | gradient (a warm start: each weight's top singular directions of the task gradient over
    adapter.init_batches training batches, before training, in every strategy; measured worse than orthonormal on both
    tasks of reports/allocator.md)."""
    init_batches: int = 4
    """adapter.init=gradient: how many training batches (of train.batch_size) the gradient sums."""


@dataclass(frozen=True)
class BudgetConfig:
    schedule: str = "cubic"
    """Budget schedule b(t): cubic | linear | constant (constant needs init_rank == target_rank)."""
    init_rank: int = 12
    """Rank of every adapter at the start; b(0) = init_rank x number of adapters."""
    target_rank: int = 8
    """Average final rank; b(T) = target_rank x number of adapters."""
    target_params: str | None = None
    """Final budget in adapter parameters instead of target_rank: a count (`150000`, `150k`, `0.3M`) or
    a percentage of the base model (`0.5%`). A triplet costs d_in + d_out + 1 parameters. With the
    constant schedule it sets the LoRA rank that fits (init_rank and target_rank are then derived)."""
    t_init: float = 0.1
    """Warm-up at b(0): steps if >= 1, fraction of training if < 1."""
    t_final: float = 0.3
    """Final phase at b(T) with fixed masks: steps if >= 1, fraction of training if < 1."""
    mask_interval: int = 10
    """Steps between masking steps during the decay."""
    strict: bool = False
    """Mask in the forward pass too, updated whenever b(t) drops: the live rank never exceeds b(t)."""
    reset_pruned: bool = False
    """Default (regrowing) mode only: each masking step also resets the optimizer state (Adam moments)
    of the triplets it prunes, so a pruned lambda regrows from its gradient alone, not from its
    momentum. Strict mode and the final phase always reset what they switch off."""
    selection: str = "per_param"
    """How a parameter budget (target_params) is filled: per_param (ranked by score per parameter; a
    triplet that does not fit is skipped for the next that does; the default since the allocator
    ablation, reports/allocator.md) | prefix (the highest scores, in order, while their running cost
    fits: the default before). The same when the budget counts ranks."""
    shrink: bool = True
    """When the final phase fixes the masks, cut every adapter to its live triplets (P, lambda, Q and their
    optimizer state; rank-0 modules become plain layers), so the final phase trains at b(T)'s cost. In every
    strategy of `adarank train`."""


@dataclass(frozen=True)
class ImportanceConfig:
    beta_sensitivity: float = 0.85
    """EMA coefficient of the sensitivity |theta * grad| (the paper's beta_1)."""
    beta_uncertainty: float = 0.85
    """EMA coefficient of the uncertainty |I - I_bar| (the paper's beta_2)."""
    score: str = "sensitivity_uncertainty"
    """Triplet score: sensitivity_uncertainty (the paper's I_bar * U_bar) | sensitivity (I_bar alone,
    the paper's ablation)."""
    task_only: bool = False
    """Score from the task loss's gradient alone: the orthogonality penalty's share of P's and Q's
    gradients (weighted and clipped like them) is taken out before |theta * grad|, so a triplet far
    from orthogonal does not look important. AdaRankTrainer and adarank's loop record that share; in
    a loop of your own call ``allocator.add_penalty_gradient_`` (see its docstring)."""


SINGULAR_LR_MULTIPLIER = 10.0
"""lambda's learning rate relative to the others: the one default of the config, the engine,
``param_groups`` and ``AdaRankTrainer`` (README, "Initialisation", says why)."""


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 400
    """Optimizer steps; the budget schedule spans exactly these."""
    batch_size: int = 32
    """Examples per device per micro-batch."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    learning_rate: float = 1e-3
    """Peak learning rate of AdamW (linear decay after warm-up)."""
    singular_lr_multiplier: float = SINGULAR_LR_MULTIPLIER
    """Learning rate of the singular values lambda relative to learning_rate (see README)."""
    warmup_ratio: float = 0.05
    """Fraction of steps of linear learning-rate warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    eval_batch_size: int = 128
    """Examples per evaluation batch."""
    save_steps: int | None = None
    """Save a checkpoint (model, optimizer, scheduler, allocator state) every N steps; None = none."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of storing them: less memory, ~30% more time."""
    eval_steps: int | None = None
    """Evaluate the validation loss every N steps (the report's validation curve); None = only after
    training. Each evaluation costs a pass over the validation split."""
    evaluate_before: bool = True
    """Causal formats: evaluate the untrained base first (the `*_before` metrics, the floor). Off saves
    one evaluation pass per run in a sweep whose runs share the base and data."""


@dataclass(frozen=True)
class WandbConfig:
    mode: str | None = None
    """online | offline | disabled; unset = offline unless wandb credentials are configured."""
    project: str = "adarank"
    """wandb project name."""


STRATEGIES = ("ddp", "fsdp2")


@dataclass(frozen=True)
class DistributedConfig:
    strategy: str = "ddp"
    """ddp (every process holds the whole model) | fsdp2 (the frozen base's weights sharded with torch's
    fully_shard per transformer block; adapters and a new head whole on every process; launch with
    torchrun --nproc_per_node N -m adarank train ...). One engine for both, and for one process."""


HEAD_MODES = ("subspace", "fixed")


@dataclass(frozen=True)
class IntrinsicDimConfig:
    min_dim: int = 16
    """`adarank intrinsic-dim`: the smallest subspace dimension d of the geometric grid."""
    max_dim: int = 65536
    """The largest d of the grid; a d90 above it is reported as not reached."""
    grid_factor: float = 2.0
    """Ratio of neighbouring grid points (> 1): min_dim, min_dim * factor, ... up to max_dim."""
    fraction: float = 0.9
    """The point measured: floor + fraction * (reference - floor) on the validation metric (0.9: d90)."""
    reference: str | None = None
    """The reference: a number, or a run directory (its metrics.json); null = fine-tune the target modules'
    weights (and a new head) in full first, at intrinsic_dim.reference_learning_rate."""
    reference_learning_rate: float = 5e-5
    """Learning rate of that full fine-tune."""
    floor_run: str | None = None
    """A run directory of the head trained alone (adapter.target_modules=[]): its validation metric is the floor
    and, with head=fixed, its head is used; null = train the head alone first. Causal LMs: the untrained base."""
    head: str = "subspace"
    """A new classification head: subspace (its parameters move inside the subspace too) | fixed (frozen at the
    head-only optimum)."""
    learning_rate: float = 0.01
    """Learning rate of theta_d (AdamW, the train.* schedule); P's columns have unit norm."""
    nonzeros: int = 1
    """Nonzeros of the sparse projection P per weight (adarank/subspace.py says why sparse)."""
    layer_scaling: bool = False
    """Aghajanyan et al.'s structure-aware variant: one trainable scale per weight tensor."""
    seeds: int = 3
    """Seeds at the two grid points around d90 (the rest of the bisection uses one)."""
    metric: str | None = None
    """The validation metric: accuracy | loss; null = accuracy where the format has one, else loss."""


@dataclass(frozen=True)
class RunConfig:
    output_dir: str = "runs/default"
    """Run directory: config.yaml, metrics.json, allocation.json."""
    overwrite: bool = False
    """Allow writing into an output_dir that already holds a finished run."""
    seed: int = 0
    """Seed for adapter init, data order and dropout (the data split is fixed)."""
    resume: str | None = None
    """A run directory to continue from its latest complete checkpoint (see train.save_steps)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    intrinsic_dim: IntrinsicDimConfig = field(default_factory=IntrinsicDimConfig)


def _leaf_fields(schema: type = RunConfig, prefix: str = "") -> dict[str, tuple[type, Any, type]]:
    """Dotted key -> (owning dataclass, default, annotated type) for every leaf of the schema."""
    hints = typing.get_type_hints(schema)
    out: dict[str, tuple[type, Any, type]] = {}
    for f in fields(schema):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if is_dataclass(default):
            out |= _leaf_fields(type(default), f"{prefix}{f.name}.")
        else:
            out[prefix + f.name] = (schema, default, hints[f.name])
    return out


@cache
def _schema_fields() -> dict[str, tuple[type, Any, type]]:
    """``_leaf_fields`` of the run config, computed once (callers must not modify it)."""
    return _leaf_fields()


def schema_keys() -> list[str]:
    """All dotted leaf keys of the run config, e.g. ``budget.init_rank``."""
    return list(_schema_fields())


def _is_list(kind: Any) -> bool:
    """Whether a field's type is a list, or a list or None."""
    return typing.get_origin(kind) is list or any(typing.get_origin(t) is list for t in typing.get_args(kind))


def list_keys() -> list[str]:
    """Keys whose value is a list (a single string is accepted for them and means a one-item list)."""
    return [k for k, (_, _, kind) in _schema_fields().items() if _is_list(kind)]


@cache
def _docstrings(schema: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the dataclass source (PEP 257 attribute
    docstrings, read with ``ast``: Python keeps no such docstring at run time)."""
    tree = ast.parse(inspect.getsource(schema))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        is_field = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        text = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) else None
        if is_field and isinstance(text, str):
            docs[node.target.id] = " ".join(text.split())
    return docs


def key_docs() -> dict[str, tuple[Any, str]]:
    """Every config key -> (default, one-line description with its allowed values), from the schema."""
    return {
        key: (default, _docstrings(owner).get(key.rsplit(".", 1)[-1], ""))
        for key, (owner, default, _) in _schema_fields().items()
    }


def _type_hint(key: str) -> str:
    """What to write for ``key``, from its type and default (used in type-error messages)."""
    entry = _schema_fields().get(key)
    if entry is None:
        return "Give a value of the type the key expects."
    _, default, kind = entry
    if _is_list(kind):
        return f"`{key}` takes a list, e.g. `{key}=[query,value]` (a single name is fine too)."
    base = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}
    what = " or ".join(names.get(t, getattr(t, "__name__", str(t))) for t in base)
    nullable = " or null" if type(None) in typing.get_args(kind) else ""
    example = (
        "" if default is None else f", e.g. `{key}={str(default).lower() if isinstance(default, bool) else default}`"
    )
    return f"`{key}` takes {what}{nullable}{example}."


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


def _unknown_key_problems(keys: list[str], source: str) -> list[str]:
    valid = schema_keys()
    sections = {k.split(".")[0] for k in valid if "." in k}
    problems = []
    for key in keys:
        if key in valid:
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


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, check_model: bool = False
) -> RunConfig:
    """Merge defaults <- YAML at ``path`` <- ``key=value`` overrides, validate, return a RunConfig.

    Every problem is found in one pass: a value of the wrong type is reported and left out, and the
    rest is still validated. With ``check_model``, the target modules and the budget are also checked
    against the model's shapes on a meta-device skeleton (no weights loaded; imports transformers).

    Raises:
        ConfigError: listing every problem found (missing file, bad YAML, unknown keys, wrong types,
            impossible values, modules that match nothing), each with how to fix it.
    """
    merged = OmegaConf.structured(RunConfig)
    problems: list[str] = []
    if path is not None:
        for source, layer in _read_layers(Path(path), (), problems):
            bad = _unknown_key_problems(_flatten(OmegaConf.to_container(layer)), source)
            problems += bad
            if not bad:
                _wrap_single_strings(layer)
                merged = _merge_or_report(merged, layer, source, problems)
    for item in overrides or []:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            problems.append(f"override `{item}` is not of the form key=value, e.g. `budget.target_rank=4`.")
            continue
        bad = _unknown_key_problems([key.strip()], "command line")
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
    from adarank.run import describe

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


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML; loading it back with ``load_config`` gives ``cfg``."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}


def parse_param_budget(text: str | int | float, base_params: int | None = None) -> int:
    """A parameter budget such as `150000`, `150k`, `0.3M` or `0.5%` (of ``base_params``), as a count.

    Raises:
        ValueError: the text is not of that form, not positive, or a percentage without ``base_params``.
    """
    raw = str(text).strip().lower().replace("_", "").replace(",", "")
    hint = "write a count such as 150000, 150k or 0.3M, or a percentage of the base model such as 0.5%"
    percent = raw.endswith("%")
    number, unit = (raw[:-1], "") if percent else (raw.rstrip("kmb"), raw[len(raw.rstrip("kmb")) :])
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"budget.target_params `{text}` is not a parameter budget; {hint}.") from None
    if unit not in _UNITS or not math.isfinite(value) or value <= 0 or (percent and value > 100):
        raise ValueError(f"budget.target_params `{text}` is not a positive parameter budget; {hint}.")
    if percent:
        if base_params is None:
            raise ValueError(f"budget.target_params `{text}` is a percentage: it needs the base model's size.")
        return int(value / 100 * base_params)
    return int(value * _UNITS[unit])


def resolve_steps(value: float, total_steps: int) -> int:
    """A phase length given as steps (>= 1) or as a fraction of training (< 1), in steps."""
    return int(round(value * total_steps)) if value < 1 else int(value)


def budget_problems(budget: BudgetConfig, total_steps: int) -> list[str]:
    """Every problem with a budget schedule over ``total_steps`` optimizer steps."""
    problems = []
    if budget.schedule not in SCHEDULES:
        problems.append(f"budget.schedule `{budget.schedule}` is not one of {', '.join(SCHEDULES)}.")
    if budget.init_rank < 1:
        problems.append(f"budget.init_rank ({budget.init_rank}) must be >= 1.")
    if budget.target_rank < 0:
        problems.append(f"budget.target_rank ({budget.target_rank}) must be >= 0.")
    if budget.target_rank > budget.init_rank and budget.target_params is None:
        problems.append(
            f"budget.target_rank ({budget.target_rank}) must be <= budget.init_rank "
            f"({budget.init_rank}): the budget only shrinks; raise init_rank or lower target_rank."
        )
    if budget.schedule == "constant" and budget.target_rank != budget.init_rank and budget.target_params is None:
        problems.append(
            f"budget.schedule=constant keeps every rank (plain LoRA): set budget.target_rank equal to "
            f"budget.init_rank ({budget.init_rank}), or use schedule=cubic to prune."
        )
    if budget.target_params is not None:
        try:
            parse_param_budget(budget.target_params, base_params=1)
        except ValueError as err:
            problems.append(str(err))
    if budget.selection not in SELECTIONS:
        problems.append(f"budget.selection `{budget.selection}` is not one of {', '.join(SELECTIONS)}.")
    if budget.mask_interval < 1:
        problems.append(f"budget.mask_interval ({budget.mask_interval}) must be >= 1 step.")
    for name in ("t_init", "t_final"):
        value = getattr(budget, name)
        if not math.isfinite(value) or value < 0 or (value >= 1 and value != int(value)):
            problems.append(f"budget.{name} ({value}) must be a whole number of steps (>= 1) or a fraction in [0, 1).")
    if total_steps < 1:
        problems.append(f"train.max_steps, the total number of optimizer steps ({total_steps}), must be >= 1.")
    elif not problems and budget.schedule != "constant":
        t_init = resolve_steps(budget.t_init, total_steps)
        t_final = resolve_steps(budget.t_final, total_steps)
        if t_init + t_final >= total_steps:
            problems.append(
                f"t_init + t_final ({t_init}+{t_final}) must be < total_steps ({total_steps}): no "
                "budget-decay phase is left; lower them or train longer."
            )
    return problems


def budget_warnings(budget: BudgetConfig, total_steps: int) -> list[str]:
    """Legal schedules that will not do what a user expects: a decay with fewer than 2 masking steps
    cuts the rank in one go, from scores of a few steps (e.g. a 2-step smoke run)."""
    if budget.schedule == "constant" or budget_problems(budget, total_steps):
        return []
    t_init = resolve_steps(budget.t_init, total_steps)
    final_start = total_steps - resolve_steps(budget.t_final, total_steps)
    masking = [
        t for t in range(t_init + 1, final_start + 1) if t == final_start or (t - t_init) % budget.mask_interval == 0
    ]
    if len(masking) >= 2:
        return []
    return [
        f"the budget decay (steps {t_init}..{final_start} of {total_steps}) has {len(masking)} masking step(s), so the "
        "rank is cut in one go rather than on a schedule; raise train.max_steps, lower budget.mask_interval "
        f"({budget.mask_interval}), or lower budget.t_init / budget.t_final."
    ]


def key_table() -> str:
    """The config keys as a Markdown table (key, default, description): the README's list is this text."""
    rows = ["| key | default | description |", "|---|---|---|"]
    for key, (default, doc) in key_docs().items():
        shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else repr(default)
        rows.append(f"| `{key}` | `{shown}` | {doc.replace('|', '&#124;')} |")
    return "\n".join(rows)


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
    problems += data_problems(cfg.data)
    problems += _model_name_problems(cfg.model)
    if cfg.wandb.mode is not None and cfg.wandb.mode not in WANDB_MODES:
        problems.append(f"wandb.mode `{cfg.wandb.mode}` is not one of {', '.join(WANDB_MODES)}.")
    problems += distributed_problems(cfg)
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


def intrinsic_dim_problems(idim: IntrinsicDimConfig, data_format: str) -> list[str]:
    """Problems with the ``intrinsic_dim.*`` keys (checked for every command; they only act there)."""
    problems = []
    if not 1 <= idim.min_dim <= idim.max_dim:
        problems.append(
            f"intrinsic_dim.min_dim ({idim.min_dim}) must be >= 1 and <= intrinsic_dim.max_dim ({idim.max_dim})."
        )
    if idim.grid_factor <= 1:
        problems.append(f"intrinsic_dim.grid_factor ({idim.grid_factor}) must be > 1, e.g. 2.")
    if not 0 < idim.fraction <= 1:
        problems.append(f"intrinsic_dim.fraction ({idim.fraction}) must be in (0, 1], e.g. 0.9.")
    if idim.reference is not None:
        try:
            float(idim.reference)
        except ValueError:
            if not (Path(idim.reference) / "metrics.json").is_file():
                problems.append(
                    f"intrinsic_dim.reference `{idim.reference}` is neither a number nor a run directory with "
                    "metrics.json; give e.g. 0.82, a finished run, or null to fine-tune in full first."
                )
    if idim.floor_run is not None and not (Path(idim.floor_run) / "metrics.json").is_file():
        problems.append(
            f"intrinsic_dim.floor_run `{idim.floor_run}` is not a finished run (no metrics.json); give a head-only "
            "run's directory or null to train the head alone first."
        )
    if idim.head not in HEAD_MODES:
        problems.append(f"intrinsic_dim.head `{idim.head}` is not one of {', '.join(HEAD_MODES)}.")
    if idim.learning_rate <= 0 or idim.reference_learning_rate <= 0:
        problems.append("intrinsic_dim.learning_rate and intrinsic_dim.reference_learning_rate must be > 0.")
    if idim.nonzeros < 1 or idim.seeds < 1:
        problems.append(
            f"intrinsic_dim.nonzeros ({idim.nonzeros}) and intrinsic_dim.seeds ({idim.seeds}) must be >= 1."
        )
    if idim.metric is not None and idim.metric not in ("accuracy", "loss"):
        problems.append(f"intrinsic_dim.metric `{idim.metric}` is not one of accuracy, loss (or null).")
    if idim.metric == "accuracy" and data_format == "language_modeling":
        problems.append("intrinsic_dim.metric=accuracy: language_modeling has no accuracy; use loss.")
    return problems


def data_problems(data: DataConfig) -> list[str]:
    """Problems with the data keys visible without reading the data (the source is checked to exist)."""
    from adarank.sources import source_problems

    problems = source_problems(data.dataset)
    if data.subset is not None and not is_hub_id(data.dataset):
        problems.append(f"data.subset `{data.subset}` applies to hub datasets only; remove it for `{data.dataset}`.")
    if data.format not in FORMATS:
        problems.append(f"data.format `{data.format}` is unknown; use one of {', '.join(FORMATS)}.")
    if data.max_length < 8:
        problems.append(f"data.max_length ({data.max_length}) must be >= 8 tokens.")
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(data, name)
        if value is not None and value < 1:
            problems.append(f"data.{name} ({value}) must be >= 1, or null for all.")
    for name in ("text_field", "label_field"):
        if not getattr(data, name).strip():
            problems.append(f"data.{name} is empty; name a column of the data.")
    if data.text_pair_field is not None and data.format != "classification":
        problems.append("data.text_pair_field applies to data.format=classification only; remove it.")
    fractions = (data.validation_fraction, data.test_fraction)
    if not all(0 <= f < 1 for f in fractions) or sum(fractions) >= 1:
        problems.append(
            f"data.validation_fraction ({data.validation_fraction}) and data.test_fraction ({data.test_fraction}) "
            "must each be in [0, 1) and leave part of train, e.g. 0.1 and 0.1."
        )
    if data.split_seed < 0:
        problems.append(f"data.split_seed ({data.split_seed}) must be >= 0.")
    problems += sft_problems(data)
    if data.label_names is not None:
        names = list(data.label_names)
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            problems.append(f"data.label_names repeats {', '.join(f'`{n}`' for n in dupes)}; list each label once.")
        if data.format != "language_modeling" and len(names) < 2:
            problems.append("data.label_names needs at least two labels for classification or generation.")
    return problems


def template_fields(template: str) -> list[str]:
    """The column names a prompt template formats, in order, once each.

    Raises:
        ValueError: the template is not a valid format string, or uses positional or attribute fields.
    """
    import string

    fields: list[str] = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is None:
            continue
        if not name or name.isdigit() or "." in name or "[" in name:
            raise ValueError(f"field `{{{name}}}` is not a column name")
        if name not in fields:
            fields.append(name)
    return fields


def sft_mode(data: DataConfig) -> str | None:
    """`pairs` (prompt / response), `chat` (messages) or None (label-word generation, other formats)."""
    if data.messages_field:
        return "chat"
    if data.prompt_field or data.prompt_template or data.response_field:
        return "pairs"
    return None


def sft_problems(data: DataConfig) -> list[str]:
    """Problems with the instruction / chat keys (data.prompt_field ... data.packing)."""
    problems = []
    keys = ("prompt_field", "response_field", "prompt_template", "messages_field", "chat_template",
            "max_answer_tokens")  # fmt: skip
    used = [k for k in keys if getattr(data, k) is not None]
    if data.packing:
        used.append("packing")
    if used and data.format != "generation":
        return [f"data.{', data.'.join(used)} apply to data.format=generation only; set it or remove them."]
    if data.messages_field and (data.prompt_field or data.prompt_template or data.response_field):
        problems.append(
            "data.messages_field (chat) and data.prompt_field / prompt_template / response_field (pairs) are two "
            "ways to give the data; keep one."
        )
    if data.chat_template and not data.messages_field:
        problems.append("data.chat_template applies to chat data only: name its column in data.messages_field.")
    if sft_mode(data) == "pairs":
        if not data.response_field:
            problems.append("data.response_field is missing: name the column holding the responses to learn.")
        if not data.prompt_field and not data.prompt_template:
            problems.append("name the prompt: data.prompt_field (a column) or data.prompt_template (a format string).")
        if data.prompt_field and data.prompt_template:
            problems.append(
                "data.prompt_field and data.prompt_template both build the prompt; keep one (a template may use "
                f"`{{{data.prompt_field}}}`)."
            )
        if data.prompt_template:
            try:
                if not template_fields(data.prompt_template):
                    problems.append("data.prompt_template uses no column; write the fields as {column}.")
            except ValueError as err:
                problems.append(f"data.prompt_template: {err}; write fields as {{column}} and braces as {{{{ }}}}.")
    if data.max_answer_tokens is not None and data.max_answer_tokens < 1:
        problems.append(f"data.max_answer_tokens ({data.max_answer_tokens}) must be >= 1, or null for no exact match.")
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
    return problems
