import pytest
import torch
from transformers import GPT2Config, GPT2Model

from adarank.core.inject import count_live_parameters, count_trainable, find_adapters, inject_adapters
from adarank.core.layers import SVDLinear


def test_suffix_trap_and_regex(bert) -> None:
    # `output.dense` is a dot-bounded suffix of BOTH attention.output.dense and the FFN output.dense.
    both = inject_adapters(bert, ["output.dense"], rank=2, alpha=2)
    assert sorted(both) == [
        "bert.encoder.layer.0.attention.output.dense",
        "bert.encoder.layer.0.output.dense",
        "bert.encoder.layer.1.attention.output.dense",
        "bert.encoder.layer.1.output.dense",
    ]


def test_regex_picks_ffn_output_only() -> None:
    from conftest import tiny_bert

    ffn = inject_adapters(tiny_bert(), [r"re:.*layer\.\d+\.output\.dense"], rank=2, alpha=2)
    assert sorted(ffn) == ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]


def test_all_linear_excludes_pooler_and_head(bert) -> None:
    adapters = inject_adapters(bert, ["all-linear"], rank=2, alpha=2, modules_to_save=["classifier"])
    assert len(adapters) == 12  # 6 linear types x 2 layers
    assert not any("pooler" in n or "classifier" in n for n in adapters)
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{p}" for n in adapters for p in ("left_vectors", "singular_values", "right_vectors")} | {
        "classifier.weight",
        "classifier.bias",
    }
    # 6 types: q,k,v,o are 32x32 (65 per triplet), FFN in/out 32<->64 (97 per triplet); head 32*2+2
    per_layer = 4 * 2 * 65 + 2 * 2 * 97
    assert count_trainable(bert) == 2 * per_layer + 66 == count_live_parameters(bert)


def test_no_match_lists_candidates(bert) -> None:
    with pytest.raises(ValueError) as err:
        inject_adapters(bert, ["query", "q_proj", "wrong"], rank=2, alpha=2)
    text = str(err.value)
    assert "`q_proj` matches no module; `wrong` matches no module." in text
    assert "bert.encoder.layer.<i>.attention.self.query" in text
    assert not find_adapters(bert), "nothing is injected when a target is wrong"


def test_non_linear_target_is_refused(bert) -> None:
    with pytest.raises(ValueError, match=r"`attention` matches non-linear module\(s\)"):
        inject_adapters(bert, ["attention"], rank=2, alpha=2)


def test_wrapped_model_equals_base_at_init(bert) -> None:
    ids = torch.randint(0, 100, (3, 9))
    before = bert(input_ids=ids).logits
    inject_adapters(bert, ["all-linear"], rank=3, alpha=6, seed=0)
    assert torch.equal(bert(input_ids=ids).logits, before)


def test_conv1d_model() -> None:
    model = GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=16))
    adapters = inject_adapters(model, ["c_attn", "c_proj"], rank=2, alpha=2)
    assert len(adapters) == 6  # c_attn, attn.c_proj, mlp.c_proj per layer
    assert all(isinstance(a, SVDLinear) for a in adapters.values())
    assert adapters["h.0.attn.c_attn"].out_features == 96


def test_double_injection_refused(bert) -> None:
    inject_adapters(bert, ["query"], rank=2, alpha=2)
    with pytest.raises(ValueError, match="already has adarank adapters"):
        inject_adapters(bert, ["value"], rank=2, alpha=2)
