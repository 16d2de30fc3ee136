"""Luong's local attention against a dense, by-hand reference."""

from __future__ import annotations

import math

import pytest
import torch

from vlattn.attention.local import LocalMonotonicAttention, LocalPredictiveAttention


def dense_reference(
    scores: torch.Tensor, centre: torch.Tensor, lengths: list[int], window: int, gaussian: bool
) -> torch.Tensor:
    """Loop version: softmax of ``scores [B, Tq, S]`` over ``|s - p_t| <= D`` and ``s < len``."""
    batch, steps = scores.shape[:2]
    weights = torch.zeros_like(scores)
    sigma = window / 2
    for b in range(batch):
        for t in range(steps):
            p = float(centre[b, t])
            kept = [s for s in range(lengths[b]) if abs(s - p) <= window]
            top = max(float(scores[b, t, s]) for s in kept)
            exps = {s: math.exp(float(scores[b, t, s]) - top) for s in kept}
            total = sum(exps.values())
            for s in kept:
                factor = math.exp(-((s - p) ** 2) / (2 * sigma**2)) if gaussian else 1.0
                weights[b, t, s] = exps[s] / total * factor
    return weights


def setup(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = [12, 7]
    query = torch.randn(2, 9, 6, generator=gen)
    keys = torch.randn(2, 12, 6, generator=gen)
    mask = torch.arange(12)[None, :] < torch.tensor(lengths)[:, None]
    return query, keys, mask, lengths


def general_scores(module: LocalMonotonicAttention, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    assert module.scorer.query_proj is not None
    return torch.einsum("btd,bsd->bts", module.scorer.query_proj(query), keys)


def test_local_m_is_a_window_softmax_around_t() -> None:
    torch.manual_seed(0)
    module = LocalMonotonicAttention(6, 6, window=2)
    query, keys, mask, lengths = setup()
    with torch.no_grad():
        context, weights = module(query, keys, mask=mask)
        centre = torch.minimum(torch.arange(9)[None, :], torch.tensor(lengths)[:, None] - 1)
        ref = dense_reference(general_scores(module, query, keys), centre, lengths, 2, False)
    torch.testing.assert_close(weights, ref)
    torch.testing.assert_close(context, torch.bmm(ref, keys))
    assert torch.all(weights[0, 0, 3:] == 0) and torch.all(weights[1, 8, :4] == 0)


def test_local_m_single_query_defaults_to_the_last_real_position() -> None:
    torch.manual_seed(0)
    module = LocalMonotonicAttention(6, 6, window=1)
    query, keys, mask, _ = setup()
    _, weights = module(query[:, 0], keys, mask=mask)
    assert weights[0, 10:].gt(0).all() and weights[0, :10].eq(0).all()  # around 11 of 12
    assert weights[1, 5:7].gt(0).all() and weights[1, :5].eq(0).all()  # around 6 of 7
    _, at_step = module(query[:, 0], keys, mask=mask, positions=torch.tensor([0, 3]))
    assert at_step[0, :2].gt(0).all() and at_step[0, 2:].eq(0).all()
    assert at_step[1, 2:5].gt(0).all() and at_step[1, 5:].eq(0).all()


def test_local_p_matches_the_formula() -> None:
    torch.manual_seed(0)
    module = LocalPredictiveAttention(6, 6, window=3)
    query, keys, mask, lengths = setup()
    with torch.no_grad():
        context, weights = module(query, keys, mask=mask)
        fraction = torch.sigmoid(module.v_p(torch.tanh(module.W_p(query)))).squeeze(-1)
        centre = torch.tensor(lengths, dtype=torch.float32)[:, None] * fraction
        ref = dense_reference(general_scores(module, query, keys), centre, lengths, 3, True)
    torch.testing.assert_close(weights, ref)
    torch.testing.assert_close(context, torch.bmm(ref, keys))


def test_local_p_position_predictor_gets_gradients_through_the_gaussian() -> None:
    torch.manual_seed(0)
    module = LocalPredictiveAttention(6, 6, window=3)
    query, keys, mask, _ = setup()
    context, _ = module(query, keys, mask=mask)
    context.square().sum().backward()
    for param in (module.W_p.weight, module.v_p.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_local_p_renormalise_and_need_weights_options() -> None:
    torch.manual_seed(0)
    module = LocalPredictiveAttention(6, 6, window=3, renormalise=True, need_weights=False)
    query, keys, mask, _ = setup()
    context, weights = module(query, keys, mask=mask)
    assert weights is None and context.shape == (2, 9, 6)
    module.need_weights = True
    context2, weights2 = module(query, keys, mask=mask)
    assert weights2 is not None
    torch.testing.assert_close(weights2.sum(-1), torch.ones(2, 9))
    torch.testing.assert_close(context2, context)
    with pytest.raises(ValueError, match="positions"):
        module(query, keys, mask=mask, positions=torch.zeros(2))


def test_bad_score_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="score must be"):
        LocalMonotonicAttention(6, 6, score="cosine")  # type: ignore[arg-type]
