"""Scaled dot-product and multi-head attention against PyTorch; the Transformer encoder."""

from __future__ import annotations

import math

import pytest
import torch

from vlattn.attention.multihead import MultiHeadAttention, ScaledDotAttention, default_heads
from vlattn.attention.transformer import (
    SinusoidalPositionalEncoding,
    TransformerEncoder,
    TransformerEncoderLayer,
)


def padded_batch(dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, dim, generator=gen)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 5, 2])[:, None]
    return x, mask


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_equals_torch_self_attention(need_weights: bool) -> None:
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 16, num_heads=4, need_weights=need_weights)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    x, mask = padded_batch()
    context, weights = ours(x, x, mask=mask)
    ref_context, ref_weights = ref(x, x, x, key_padding_mask=~mask, need_weights=need_weights)
    torch.testing.assert_close(context, ref_context, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(weights, ref_weights, atol=1e-5, rtol=1e-5)
    else:
        assert weights is None


def test_multihead_equals_torch_with_other_key_and_value_sizes() -> None:
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 10, num_heads=4, value_dim=6, average_weights=False)
    ref = torch.nn.MultiheadAttention(16, 4, kdim=10, vdim=6, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    query, _ = padded_batch()
    keys, values = torch.randn(3, 9, 10), torch.randn(3, 9, 6)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 4, 1])[:, None]
    context, weights = ours(query, keys, values, mask=mask)
    ref_context, ref_weights = ref(query, keys, values, key_padding_mask=~mask, average_attn_weights=False)
    torch.testing.assert_close(context, ref_context, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, ref_weights, atol=1e-5, rtol=1e-5)


def test_multihead_gradients_equal_torch() -> None:
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 16, num_heads=8, need_weights=False)
    ref = torch.nn.MultiheadAttention(16, 8, batch_first=True)
    ref.load_state_dict(ours.state_dict())
    x, mask = padded_batch()
    ours(x, x, mask=mask)[0].square().sum().backward()
    ref(x, x, x, key_padding_mask=~mask, need_weights=False)[0].square().sum().backward()
    for name, param in ours.named_parameters():
        ref_grad = dict(ref.named_parameters())[name].grad
        torch.testing.assert_close(param.grad, ref_grad, atol=1e-5, rtol=1e-5)


def test_multihead_by_hand_for_two_heads() -> None:
    torch.manual_seed(0)
    module = MultiHeadAttention(4, 4, num_heads=2)
    x, mask = padded_batch(4)
    with torch.no_grad():
        context, weights = module(x, x, mask=mask)
        w_q, w_k, w_v = module.in_proj_weight.chunk(3)
        b_q, b_k, b_v = module.in_proj_bias.chunk(3)
        q, k, v = x @ w_q.T + b_q, x @ w_k.T + b_k, x @ w_v.T + b_v
        heads, head_weights = [], []
        for h in (slice(0, 2), slice(2, 4)):
            scores = q[..., h] @ k[..., h].transpose(1, 2) / math.sqrt(2)
            a = torch.softmax(scores.masked_fill(~mask[:, None, :], -math.inf), dim=-1)
            heads.append(a @ v[..., h])
            head_weights.append(a)
        expected = module.out_proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(context, expected)
    torch.testing.assert_close(weights, (head_weights[0] + head_weights[1]) / 2)


def test_scaled_dot_fused_and_explicit_paths_agree() -> None:
    x, mask = padded_batch()
    query = torch.randn(3, 4, 16)
    explicit = ScaledDotAttention(16, 16)
    fused = ScaledDotAttention(16, 16, need_weights=False)
    context, weights = explicit(query, x, mask=mask)
    fused_context, none = fused(query, x, mask=mask)
    assert none is None
    torch.testing.assert_close(fused_context, context, atol=1e-5, rtol=1e-5)
    scores = query @ x.transpose(1, 2) / 4.0
    expected = torch.softmax(scores.masked_fill(~mask[:, None, :], -math.inf), dim=-1)
    torch.testing.assert_close(weights, expected)
    empty = torch.zeros_like(mask)
    assert fused(query, x, mask=empty)[0].abs().sum() == 0


def test_multihead_fused_path_gives_zeros_for_empty_rows() -> None:
    module = MultiHeadAttention(16, 16, need_weights=False)
    x, mask = padded_batch()
    mask[2] = False
    context, _ = module(x[:, 0], x, mask=mask)
    assert torch.isfinite(context).all() and torch.all(context[2] == 0)


def test_default_heads_and_bad_heads() -> None:
    assert (default_heads(256), default_heads(100), default_heads(6), default_heads(5)) == (
        8,
        4,
        2,
        1,
    )
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 10, num_heads=3)
    with pytest.raises(ValueError, match="query_dim == key_dim"):
        ScaledDotAttention(4, 5)


def test_sinusoidal_encoding_follows_the_paper() -> None:
    encoding = SinusoidalPositionalEncoding(6, max_len=50)
    x = torch.zeros(1, 20, 6)
    table = encoding(x)[0]
    for pos in (0, 3, 19):
        for i in range(3):
            angle = pos / 10000 ** (2 * i / 6)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    torch.testing.assert_close(encoding(x[:, :5], offset=3)[0], table[3:8])
    assert "table" not in encoding.state_dict()
    with pytest.raises(ValueError, match="max_len"):
        encoding(torch.zeros(1, 51, 6))


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_equals_torch(norm_first: bool) -> None:
    torch.manual_seed(0)
    ours = TransformerEncoderLayer(16, 4, 32, dropout=0.0, norm_first=norm_first)
    ref = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    ref.load_state_dict(ours.state_dict())
    x, mask = padded_batch()
    out = ours(x, mask)
    torch.testing.assert_close(out, ref(x, src_key_padding_mask=~mask), atol=1e-5, rtol=1e-5)
    ours.need_weights = True
    torch.testing.assert_close(ours(x, mask), out, atol=1e-5, rtol=1e-5)
    assert ours.attention_weights is not None and ours.attention_weights.shape == (3, 7, 7)


def test_encoder_stack_shapes_and_padding_independence() -> None:
    torch.manual_seed(0)
    encoder = TransformerEncoder(16, num_layers=2, dropout=0.0, norm_first=True).eval()
    x, mask = padded_batch()
    out = encoder(x, mask)
    assert out.shape == x.shape and isinstance(encoder.norm, torch.nn.LayerNorm)
    noisy = x.clone()
    noisy[~mask] = 100.0
    torch.testing.assert_close(encoder(noisy, mask)[mask], out[mask], atol=1e-5, rtol=1e-5)
