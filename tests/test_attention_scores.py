"""Each score function against the paper's formula, computed by hand with plain loops."""

from __future__ import annotations

import math

import torch
from attention_cases import build, inputs


def reference(score_fn, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor):
    """Loop over examples and positions: ``score_fn(q, k, s)``, masked softmax, weighted sum."""
    batch, source, _ = keys.shape
    weights = torch.zeros(batch, source)
    context = torch.zeros(batch, keys.shape[-1])
    for b in range(batch):
        scores = [score_fn(query[b], keys[b, s], s) for s in range(source)]
        kept = [s for s in range(source) if mask[b, s]]
        top = max(float(scores[s]) for s in kept)
        exps = {s: math.exp(float(scores[s]) - top) for s in kept}
        total = sum(exps.values())
        for s in kept:
            weights[b, s] = exps[s] / total
            context[b] += weights[b, s] * keys[b, s]
    return context, weights


def check(name: str, score_fn) -> None:
    module = build(name)
    query, keys, mask = inputs(name)
    with torch.no_grad():
        context, weights = module(query, keys, mask=mask)
        ref_context, ref_weights = reference(lambda q, k, s: score_fn(module, q, k), query, keys, mask)
    torch.testing.assert_close(weights, ref_weights)
    torch.testing.assert_close(context, ref_context)


def mlp_score(m, q, k):
    hidden = m.query_proj.weight @ q + m.query_proj.bias + m.key_proj.weight @ k
    return m.v.weight[0] @ torch.tanh(hidden)


def test_additive_is_v_tanh_wq_plus_uk_plus_b() -> None:
    check("additive", mlp_score)


def test_soft_spatial_is_xu_f_att() -> None:
    # Xu et al.: e_ti = f_att(a_i, h_{t-1}) (an MLP), alpha = softmax(e), z = sum alpha_i a_i
    check("soft-spatial", mlp_score)


def test_hard_spatial_expectation_mode_is_the_soft_expectation() -> None:
    check("hard-spatial", mlp_score)


def test_dot_is_inner_product() -> None:
    check("dot", lambda m, q, k: q @ k)


def test_general_is_bilinear() -> None:
    # Linear stores W as [Dk, Dq]; the bilinear form q^T W_a k has W_a = weight^T.
    check("general", lambda m, q, k: q @ m.query_proj.weight.T @ k)


def test_concat_is_v_tanh_w_concatenation() -> None:
    check("concat", lambda m, q, k: m.v_a.weight[0] @ torch.tanh(m.W_a.weight @ torch.cat([q, k])))


def test_location_ignores_keys_in_the_score() -> None:
    def score_at(m, q, s):
        return m.W_a.weight[s] @ q + m.W_a.bias[s]

    module = build("location")
    query, keys, mask = inputs("location")
    with torch.no_grad():
        _, weights = module(query, keys, mask=mask)
        _, shuffled = module(query, torch.randn_like(keys), mask=mask)
        ref = reference(lambda q, k, s: score_at(module, q, s), query, keys, mask)[1]
    torch.testing.assert_close(weights, shuffled)
    torch.testing.assert_close(weights, ref)


def test_soft_spatial_gate_scales_the_context() -> None:
    module = build("soft-spatial", gate=True)
    query, keys, mask = inputs("soft-spatial")
    with torch.no_grad():
        context, weights = module(query, keys, mask=mask)
        beta = torch.sigmoid(module.gate(query))
    torch.testing.assert_close(context, beta * torch.einsum("bs,bsd->bd", weights, keys))


def test_additive_family_reuses_projected_keys() -> None:
    for name in ("additive", "soft-spatial", "hard-spatial"):
        module = build(name)
        query, keys, mask = inputs(name)
        projected = module.project_keys(keys)
        for out, ref in zip(
            module(query, keys, mask=mask, projected_keys=projected),
            module(query, keys, mask=mask),
            strict=True,
        ):
            torch.testing.assert_close(out, ref)
