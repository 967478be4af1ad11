import torch
from torch import nn

from adarank.core.importance import init_importance, triplet_scores, update_importance_
from adarank.core.layers import SVDLinear


def _layer_with_grads() -> SVDLinear:
    layer = SVDLinear(nn.Linear(3, 2), rank=2, alpha=2)
    with torch.no_grad():
        layer.left_vectors.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        layer.singular_values.copy_(torch.tensor([0.5, -1.0]))
        layer.right_vectors.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]))
    layer.left_vectors.grad = torch.tensor([[0.1, 0.2], [0.3, -0.4]])
    layer.singular_values.grad = torch.tensor([2.0, 1.0])
    layer.right_vectors.grad = torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.5, 0.5]])
    return layer


def test_scores_match_hand_computation() -> None:
    layer = _layer_with_grads()
    state = init_importance(layer)
    update_importance_(state, layer, beta_sensitivity=0.5, beta_uncertainty=0.5)
    # I_P = [[.1,.4],[.9,1.6]], I_bar = I/2, U_bar = |I - I/2|/2 = I/4, s = I^2/8
    torch.testing.assert_close(state["left_vectors.sensitivity"], torch.tensor([[0.05, 0.2], [0.45, 0.8]]))
    torch.testing.assert_close(state["left_vectors.uncertainty"], torch.tensor([[0.025, 0.1], [0.225, 0.4]]))
    # S_0 = 0.125 + (0.00125 + 0.10125)/2 + (0.125 + 0 + 0.5)/3
    torch.testing.assert_close(triplet_scores(state), torch.tensor([0.3845833, 0.3158333]))
    update_importance_(state, layer, beta_sensitivity=0.5, beta_uncertainty=0.5)
    # second identical step: I_bar = 3I/4, U_bar = I/4, s = 3 I^2 / 16
    torch.testing.assert_close(triplet_scores(state), torch.tensor([0.576875, 0.47375]))


def test_buffers_are_fp32_for_bf16_params() -> None:
    layer = _layer_with_grads().to(torch.bfloat16)
    for part in ("left_vectors", "singular_values", "right_vectors"):
        getattr(layer, part).grad = torch.ones_like(getattr(layer, part))
    state = init_importance(layer)
    update_importance_(state, layer, 0.85, 0.85)
    assert {v.dtype for v in state.values()} == {torch.float32}


def test_missing_gradient_is_explained() -> None:
    layer = SVDLinear(nn.Linear(3, 2), rank=2, alpha=2)
    try:
        update_importance_(init_importance(layer), layer, 0.85, 0.85)
    except RuntimeError as err:
        assert "has no gradient" in str(err) and "AdaRankCallback" in str(err)
    else:
        raise AssertionError("expected RuntimeError")


def test_sensitivity_only_score_is_the_smoothed_sensitivity() -> None:
    layer = _layer_with_grads()
    state = init_importance(layer)
    update_importance_(state, layer, beta_sensitivity=0.5, beta_uncertainty=0.5)
    # I_bar = I/2. S_0 = 0.5 + mean(.05, .45) + mean(.5, 0, 1); S_1 = 0.5 + mean(.2, .8) + mean(0, .25, .25)
    torch.testing.assert_close(triplet_scores(state, "sensitivity"), torch.tensor([1.25, 0.5 + 0.5 + 0.5 / 3]))
