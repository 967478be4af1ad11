"""Shared fixtures: tiny locally built models; one thread so two processes never thrash."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from adarank.data import default_model_path  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in its own working directory (relative output_dirs such as runs/default never
    meet a developer's runs), with wandb's files under the test's temporary folder."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    base = tmp_path_factory.getbasetemp() / "wandb"
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(base))


def tiny_config(llama: bool, **fields: object) -> BertConfig | LlamaConfig:
    """A BERT or Llama config with hidden size 32, 2 layers, 2 heads and FFN 64; ``fields`` set or
    override the rest (vocab_size, max_position_embeddings, ...)."""
    shape: dict[str, object] = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 2}  # fmt: skip
    return (LlamaConfig if llama else BertConfig)(**{**shape, **fields})


def tiny_bert(num_layers: int = 2, vocab_size: int = 100, seed: int = 0) -> BertForSequenceClassification:
    """A 2-layer BERT classifier with hidden size 32 (dropout off for exact comparisons)."""
    torch.manual_seed(seed)
    config = tiny_config(False, vocab_size=vocab_size, num_hidden_layers=num_layers, max_position_embeddings=64,
                         num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    return BertForSequenceClassification(config).eval()


@pytest.fixture
def bert() -> BertForSequenceClassification:
    return tiny_bert()


def save_tiny_model(folder: Path, llama: bool, gpt2: bool = False, **fields: object) -> None:
    """Save a 2-layer model with hidden size 32 and MiniLM's tokenizer to ``folder``: a BERT classifier
    (its head in the checkpoint), a Llama base LM, or (``gpt2``) a GPT-2 LM, whose linears are Conv1D.
    ``fields`` override the BERT / Llama config (e.g. tie_word_embeddings=True, as SmolLM2's)."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    if llama or gpt2:
        tokenizer.eos_token = "[SEP]"  # a causal LM needs one to end its answers
    torch.manual_seed(0)
    if gpt2:
        model: torch.nn.Module = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=128,
                                                            n_embd=32, n_layer=2, n_head=2))  # fmt: skip
    else:
        kv_heads = {"num_key_value_heads": 1} if llama else {}
        config = tiny_config(llama, vocab_size=tokenizer.vocab_size, max_position_embeddings=128, **kv_heads, **fields)
        # the Llama checkpoint is a base LM, without a classification head
        model = LlamaForCausalLM(config) if llama else BertForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
