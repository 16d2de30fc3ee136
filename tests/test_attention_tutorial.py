"""The tutorial's pooling layer, kept faithful, and its corrected version."""

from __future__ import annotations

import math

import pytest
import torch

from vlattn.attention.tutorial import CorrectedTutorialAttention, TutorialAttention


def test_faithful_layer_matches_the_keras_formula() -> None:
    torch.manual_seed(0)
    layer = TutorialAttention(0, 5, steps=32)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(4, 32, 5)
    context, weights = layer(None, x)
    # Keras: et = squeeze(tanh(dot(x, W) + b)); at = softmax(et); sum(x * at, axis=1)
    e = torch.tanh(torch.einsum("btd,do->bto", x, layer.weight) + layer.bias).squeeze(-1)
    a = torch.exp(e) / torch.exp(e).sum(1, keepdim=True)
    torch.testing.assert_close(weights, a)
    torch.testing.assert_close(context, (x * a.unsqueeze(-1)).sum(1))
    assert layer.bias.shape == (32, 1) and layer.weight.shape == (5, 1)


def test_faithful_layer_ignores_the_mask_unless_asked() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 10, 5)
    mask = torch.arange(10)[None, :] < torch.tensor([10, 6])[:, None]
    _, weights = TutorialAttention(0, 5, steps=10)(None, x, mask=mask)
    assert torch.all(weights[1, 6:] > 0)  # padding receives weight, as in the tutorial
    torch.manual_seed(0)
    _, masked = TutorialAttention(0, 5, steps=10, mask_padding=True)(None, x, mask=mask)
    assert torch.all(masked[1, 6:] == 0)


def test_faithful_layer_caps_any_token_at_about_19_percent_of_32() -> None:
    layer = TutorialAttention(0, 4, steps=32)
    with torch.no_grad():
        layer.weight.fill_(100.0)  # scores saturate at +-1
    x = -torch.ones(1, 32, 4)
    x[0, 7] = 1.0  # the one relevant token
    _, weights = layer(None, x)
    cap = math.e**2 / (math.e**2 + 31)
    assert weights[0, 7].item() == pytest.approx(cap, rel=1e-4)
    assert 0.19 < cap < 0.195


def test_corrected_layer_lifts_the_cap_and_masks() -> None:
    layer = CorrectedTutorialAttention(0, 4, hidden_dim=4)
    with torch.no_grad():
        layer.proj.weight.copy_(torch.eye(4))
        layer.proj.bias.zero_()
        layer.v.weight.fill_(10.0)  # v's scale is learned: scores are not capped
    x = -torch.ones(1, 32, 4)
    x[0, 7] = 1.0
    _, weights = layer(None, x)
    assert weights[0, 7].item() > 0.99
    mask = torch.ones(1, 32, dtype=torch.bool)
    mask[0, 7] = False
    _, masked = layer(None, x, mask=mask)
    assert masked[0, 7] == 0 and masked.sum().item() == pytest.approx(1.0)


def test_corrected_layer_matches_its_formula_on_any_length() -> None:
    torch.manual_seed(0)
    layer = CorrectedTutorialAttention(0, 5, hidden_dim=3)
    x = torch.randn(2, 50, 5)
    with torch.no_grad():
        context, weights = layer(torch.randn(2, 7), x)
        e = torch.tanh(x @ layer.proj.weight.T + layer.proj.bias) @ layer.v.weight[0]
        torch.testing.assert_close(weights, torch.softmax(e, dim=1))
        torch.testing.assert_close(context, torch.einsum("bs,bsd->bd", weights, x))


def test_faithful_layer_rejects_longer_sequences_clearly() -> None:
    with pytest.raises(ValueError, match="steps=40"):
        TutorialAttention(0, 4, steps=32)(None, torch.randn(1, 40, 4))


def test_query_sequence_repeats_the_pooled_result() -> None:
    layer = CorrectedTutorialAttention(0, 5)
    x = torch.randn(2, 6, 5)
    context, weights = layer(torch.randn(2, 3, 8), x)
    single, single_weights = layer(None, x)
    assert context.shape == (2, 3, 5) and weights.shape == (2, 3, 6)
    torch.testing.assert_close(context[:, 1], single)
    torch.testing.assert_close(weights[:, 2], single_weights)
