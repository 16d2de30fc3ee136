"""Luong's global attention scores: ``dot``, ``general``, ``concat`` and ``location``.

Luong, Pham and Manning, "Effective Approaches to Attention-based Neural Machine Translation",
EMNLP 2015, section 3.1:

* ``dot``:      ``score(h_t, h_s) = h_t^T h_s``
* ``general``:  ``score(h_t, h_s) = h_t^T W_a h_s``
* ``concat``:   ``score(h_t, h_s) = v_a^T tanh(W_a [h_t; h_s])``
* ``location``: ``a_t = softmax(W_a h_t)`` (the weights depend on the query only)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlattn.attention.additive import mlp_scores
from vlattn.attention.errors import AttentionConfigError
from vlattn.attention.scored import ScoredAttention


class DotAttention(ScoredAttention):
    """``score(q, k) = q^T k`` (Luong et al. 2015); needs ``query_dim == key_dim``.

    Args:
        query_dim: ``D``.
        key_dim: ``D`` (must equal ``query_dim``).
        scale: divide the scores by ``sqrt(D)`` (off, as in the paper).
    """

    def __init__(self, query_dim: int, key_dim: int, scale: bool = False) -> None:
        super().__init__(query_dim, key_dim)
        if query_dim != key_dim:
            raise AttentionConfigError(
                f"dot attention needs query_dim == key_dim, got {query_dim} and {key_dim}; "
                "use 'general' to learn a projection between them"
            )
        self.scale = scale

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """``[B, Tq, D]`` x ``[B, S, D]`` -> ``[B, Tq, S]``."""
        scores = torch.bmm(query, keys.transpose(1, 2))
        return scores / self.key_dim**0.5 if self.scale else scores


class GeneralAttention(ScoredAttention):
    """``score(q, k) = q^T W_a k`` (Luong et al. 2015), computed as ``(W_a^T q)^T k``.

    Args:
        query_dim: ``Dq``.
        key_dim: ``Dk``.
        bias: add a learned bias to the projected query (off, as in the paper).
    """

    def __init__(self, query_dim: int, key_dim: int, bias: bool = False) -> None:
        super().__init__(query_dim, key_dim)
        self.query_proj = nn.Linear(query_dim, key_dim, bias=bias)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """``[B, Tq, Dq]`` x ``[B, S, Dk]`` -> ``[B, Tq, S]``."""
        return torch.bmm(self.query_proj(query), keys.transpose(1, 2))


class ConcatAttention(ScoredAttention):
    """``score(q, k) = v_a^T tanh(W_a [q; k])`` (Luong et al. 2015).

    ``W_a`` is one ``[H, Dq + Dk]`` matrix, applied as its query and key halves so each key is
    projected once rather than once per query.

    Args:
        query_dim: ``Dq``.
        key_dim: ``Dk``.
        hidden_dim: ``H`` (default ``key_dim``).
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__(query_dim, key_dim)
        self.hidden_dim = hidden_dim or key_dim
        self.W_a = nn.Linear(query_dim + key_dim, self.hidden_dim, bias=False)
        self.v_a = nn.Linear(self.hidden_dim, 1, bias=False)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """``[B, Tq, Dq]`` x ``[B, S, Dk]`` -> ``[B, Tq, S]``."""
        w_query, w_key = self.W_a.weight.split([self.query_dim, self.key_dim], dim=1)
        return mlp_scores(query @ w_query.T, keys @ w_key.T, self.v_a)


class LocationAttention(ScoredAttention):
    """``a_t = softmax(W_a h_t)`` (Luong et al. 2015): weights from the query alone.

    ``W_a`` has one output per source position, so sources may be at most ``max_len`` long;
    a source of length ``S < max_len`` uses the first ``S`` outputs. The keys only serve as
    the default values.

    Args:
        query_dim: ``Dq``.
        key_dim: ``Dk`` (unused by the score).
        max_len: the longest source this layer accepts.
    """

    def __init__(self, query_dim: int, key_dim: int, max_len: int = 128) -> None:
        super().__init__(query_dim, key_dim)
        self.max_len = max_len
        self.W_a = nn.Linear(query_dim, max_len)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """``[B, Tq, Dq]`` (and ``keys [B, S, Dk]`` for ``S``) -> ``[B, Tq, S]``."""
        source_len = keys.shape[1]
        if source_len > self.max_len:
            raise AttentionConfigError(
                f"location attention was built for sources of at most {self.max_len} positions, "
                f"got {source_len}; build it with max_len={source_len} or more"
            )
        return self.W_a(query)[..., :source_len]
