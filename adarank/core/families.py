"""Default target modules by model family (``adapter.target_modules=[auto]``, the default): the attention
projections of the families adarank knows, found from the model config's ``model_type`` (pure data and one
function; no model is loaded here)."""

from __future__ import annotations

from collections.abc import Sequence

AUTO = "auto"
"""The target keyword for the model family's attention projections."""

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj"]
_BERT_LIKE = ["query", "key", "value", "attention.output.dense"]
FAMILY_TARGETS: dict[str, list[str]] = {
    **dict.fromkeys(
        ["llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
         "phi3", "olmo", "olmo2", "granite", "smollm3"],
        _LLAMA_LIKE,
    ),
    **dict.fromkeys(["bert", "roberta", "xlm-roberta", "electra", "camembert", "mpnet"], _BERT_LIKE),
    "gpt2": ["c_attn", "attn.c_proj"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin"],
}  # fmt: skip
"""model_type -> the attention projections adapted by default (as dot-bounded suffixes)."""


def expand_targets(targets: Sequence[str], model_type: str | None) -> list[str]:
    """``targets`` with ``auto`` replaced by the attention projections of ``model_type``'s family.

    Raises:
        ValueError: ``auto`` for a family not in ``FAMILY_TARGETS`` (the message names the fix).
    """
    if AUTO not in targets:
        return list(targets)
    family = FAMILY_TARGETS.get(model_type or "")
    if family is None:
        known = ", ".join(sorted(FAMILY_TARGETS))
        raise ValueError(
            f"`auto` picks the attention projections of a known model family ({known}), and this model's family "
            f"is `{model_type or 'unknown'}`: name the modules to adapt in adapter.target_modules"
        )
    expanded: list[str] = []
    for target in targets:
        expanded += [t for t in family if t not in expanded] if target == AUTO else [target]
    return expanded
