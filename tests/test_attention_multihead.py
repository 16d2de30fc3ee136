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


def torch_twin(ours: MultiHeadAttention) -> torch.nn.MultiheadAttention:
    """``nn.MultiheadAttention`` with ``ours``' sizes and weights (train mode, no dropout)."""
    ref = torch.nn.MultiheadAttention(
        ours.embed_dim, ours.num_heads, kdim=ours.key_dim, vdim=ours.value_dim, batch_first=True
    )
    ref.load_state_dict(ours.state_dict())
    return ref.train()


def leaf(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def lengths_mask(lengths: list[int], size: int) -> torch.Tensor:
    return torch.arange(size)[None, :] < torch.tensor(lengths)[:, None]


def run_both(ours, ref, inputs, mask, need_weights, average, weights_loss):
    """Forward + backward through both; returns (context, weights, input grads, parameter grads) pairs."""
    results = []
    for module in (ours, ref):
        for tensor in inputs:
            tensor.grad = None
        module.zero_grad(set_to_none=True)
        if module is ours:
            context, weights = module(*inputs, mask=mask)
        else:
            query, keys, values = (inputs + [inputs[-1]] * 2)[:3]
            padding = None if mask is None else ~mask
            context, weights = module(
                query, keys, values, key_padding_mask=padding, need_weights=need_weights, average_attn_weights=average
            )
        upstream = torch.linspace(-1, 1, context.numel()).view_as(context)
        loss = (context * upstream).sum()
        if weights_loss:
            loss = loss + (weights * torch.linspace(0, 3, weights.numel()).view_as(weights)).sum()
        loss.backward()
        grads = {name: p.grad for name, p in module.named_parameters()}
        results.append((context, weights, [t.grad for t in inputs], grads))
    return results


CASES = {
    # name: (Dq, Dk, Dv, Tq, S, inputs given as)
    "self": (16, 16, 16, 7, 7, "self"),
    "cross-shared-kv": (16, 16, 16, 5, 9, "query+keys"),
    "cross-separate-kv": (16, 16, 16, 5, 9, "query+keys+values"),
    "other-sizes": (16, 10, 6, 5, 9, "query+keys+values"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("average", [True, False])
def test_multihead_outputs_and_gradients_equal_torch(
    case: str, need_weights: bool, masked: bool, average: bool
) -> None:
    """Outputs, weights and every gradient (parameters and inputs) against ``nn.MultiheadAttention``."""
    if average is False and need_weights is False:
        pytest.skip("no weights to average")
    query_dim, key_dim, value_dim, steps, source, given = CASES[case]
    torch.manual_seed(0)
    ours = MultiHeadAttention(
        query_dim, key_dim, num_heads=4, value_dim=value_dim, need_weights=need_weights, average_weights=average
    ).train()
    with torch.no_grad():  # non-zero biases, so their gradients and uses are checked too
        ours.in_proj_bias.uniform_(-0.5, 0.5)
        ours.out_proj.bias.uniform_(-0.5, 0.5)
    ref = torch_twin(ours)
    query = leaf(3, steps, query_dim, seed=1)
    inputs = {
        "self": [query],
        "query+keys": [query, leaf(3, source, key_dim, seed=2)],
        "query+keys+values": [query, leaf(3, source, key_dim, seed=2), leaf(3, source, value_dim, seed=3)],
    }[given]
    if given == "self":
        inputs = [query, query]
    mask = lengths_mask([source, source - 2, 1], source) if masked else None
    (context, weights, input_grads, grads), (ref_context, ref_weights, ref_input_grads, ref_grads) = run_both(
        ours, ref, inputs, mask, need_weights, average, weights_loss=need_weights
    )
    close = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(context, ref_context, **close)
    if need_weights:
        torch.testing.assert_close(weights, ref_weights, **close)
    else:
        assert weights is None
    for grad, ref_grad in zip(input_grads, ref_input_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, **close)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], **close, msg=name)


@pytest.mark.parametrize("average", [True, False])
def test_multihead_gradients_through_the_weights_alone_equal_torch(average: bool) -> None:
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 16, num_heads=4, average_weights=average).train()
    ref = torch_twin(ours)
    x, mask = padded_batch()
    grads = []
    for module, args in ((ours, (x, x)), (ref, (x, x, x))):
        leaf_x = x.clone().requires_grad_()
        module.zero_grad(set_to_none=True)
        kwargs = {"mask": mask} if module is ours else {"key_padding_mask": ~mask, "average_attn_weights": average}
        weights = module(*(leaf_x for _ in args), **kwargs)[1]
        (weights * torch.linspace(-2, 2, weights.numel()).view_as(weights)).sum().backward()
        grads.append([leaf_x.grad, *(p.grad for p in module.parameters())])
    for grad, ref_grad in zip(*grads, strict=True):
        if ref_grad is None:  # nothing reaches the output projection
            assert grad is None or torch.all(grad == 0)
        else:
            torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_example_without_keys_gives_zeros_and_no_gradient(need_weights: bool) -> None:
    """The other examples match torch; the empty one gets zero context, weights and gradients."""
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 16, num_heads=4, need_weights=need_weights).train()
    ref = torch_twin(ours)
    x = leaf(3, 7, 16, seed=1)
    mask = lengths_mask([7, 0, 3], 7)
    context, weights = ours(x, x, mask=mask)
    loss = context.square().sum() + (0.0 if weights is None else weights.square().sum())
    loss.backward()
    assert torch.all(context[1] == 0) and torch.isfinite(x.grad).all() and torch.all(x.grad[1] == 0)
    if need_weights:
        assert torch.all(weights[1] == 0)
    keep = [0, 2]
    ours.zero_grad(set_to_none=True)
    ours(x[keep], x[keep], mask=mask[keep])[0].sum().backward()
    kept_grads = {name: p.grad.clone() for name, p in ours.named_parameters()}
    ref_context, _ = ref(x[keep], x[keep], x[keep], key_padding_mask=~mask[keep])
    torch.testing.assert_close(context[keep], ref_context, atol=1e-5, rtol=1e-5)
    ours.zero_grad(set_to_none=True)
    ours(x, x, mask=mask)[0].sum().backward()  # the empty example adds nothing to the gradients
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, kept_grads[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_single_query_and_dropout_paths(need_weights: bool) -> None:
    torch.manual_seed(0)
    module = MultiHeadAttention(16, 16, num_heads=4, need_weights=need_weights, dropout=0.5).train()
    x, mask = padded_batch()
    context, weights = module(x[:, 0], x, mask=mask)
    assert context.shape == (3, 16) and (weights is None) == (not need_weights)
    context.sum().backward()
    if need_weights:
        assert weights.shape == (3, 7) and torch.all(weights[~mask] == 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    module.eval()  # dropout off: the single query is the first step of the sequence
    torch.testing.assert_close(module(x[:, 0], x, mask=mask)[0], module(x[:, :1], x, mask=mask)[0][:, 0])


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
