"""Typed configuration: dataclass defaults <- YAML file <- ``key=value`` overrides.

The dataclasses are the schema. ``load_config`` merges a YAML file and command-line overrides into
them with OmegaConf, reports every problem at once (unknown keys with the closest valid one, wrong
types, impossible values) and returns plain frozen dataclasses: library code never sees a
``DictConfig``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from omegaconf import OmegaConf

SCHEDULES = ("cubic", "linear", "constant")
SCORES = ("sensitivity_uncertainty", "sensitivity")
SELECTIONS = ("prefix", "per_param")
INITS = ("orthonormal", "gradient")
FORMATS = ("classification", "generation", "language_modeling")
DTYPES = ("float32", "bfloat16", "float16")
INCLUDE_KEY = "include"
RESUME_MARKER = "adarank_allocator.json"  # = adarank.training.checkpoint.ALLOCATOR_STATE
ENGINE_STATE = "engine_state.pt"  # the engine's part of a checkpoint (>= 0.2; 0.1's Trainer engine had none)
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
    quantization: str = "none"
    """Quantize the frozen base at load: none | int8 (weight-only, per row) | nf4 (4-bit NormalFloat): the
    linear layers of its blocks, after model.dtype (a GGUF is dequantized first); embeddings, the output
    head and a new head stay as loaded; adapters train in float on top. Needs torchao (adarank[quant]). Not
    with distributed.strategy=fsdp2 or adapter.init=gradient."""


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
    target_modules: list[str] = field(default_factory=lambda: ["auto"])
    """Modules to adapt: name suffixes (dot-bounded), `re:<regex>` (full match), `all-linear`, or `auto` (the
    default): the model family's attention projections (Llama, Mistral, Qwen, Gemma: q/k/v/o_proj; BERT,
    RoBERTa: query, key, value, attention.output.dense; GPT-2: c_attn, attn.c_proj; DistilBERT: q/k/v/out_lin),
    written resolved into the run's config.yaml; `[]` trains the classification head alone (a linear probe,
    the floor adapters must beat)."""
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
    ranks_from: str | None = None
    """Allocate-then-train: train the per-module ranks an earlier run found, fixed, from a fresh start. A run
    directory or its allocation.json (module -> rank). Each targeted module keeps the first `rank` triplets
    of its usual budget.init_rank draw (rank 0: left plain), so the scaling stays alpha / init_rank as in the
    run that found them; no allocation follows (budget.schedule, target_rank and target_params are not used).
    The targeted modules must be exactly the file's."""


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
``param_groups`` and ``AdaRankTrainer`` (docs/method.md, "Initialisation", says why)."""


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
    """Learning rate of the singular values lambda relative to learning_rate (see docs/method.md)."""
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
    """Nonzeros of the sparse projection P per weight (adarank/analysis/subspace.py says why sparse)."""
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


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML; loading it back with ``load_config`` gives ``cfg``."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def template_fields(template: str) -> list[str]:
    """The column names a prompt template formats, in order, once each.

    Raises:
        ValueError: the template is not a valid format string, or uses positional or attribute fields.
    """

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


@dataclass(frozen=True)
class IntrinsicDimRunConfig(RunConfig):
    """`adarank intrinsic-dim`'s configuration: a run's keys plus a section of its own, which no other
    command reads, validates or writes into a run's config.yaml."""

    intrinsic_dim: IntrinsicDimConfig = field(default_factory=IntrinsicDimConfig)
