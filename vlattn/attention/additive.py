"""Bahdanau's additive attention (``additive``): ``score(q, k) = v^T tanh(W q + U k + b)``.

Bahdanau, Cho and Bengio, "Neural Machine Translation by Jointly Learning to Align and
Translate", ICLR 2015. The score is a one-hidden-layer MLP over the query and each key, so the
query and key sizes may differ.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlattn.attention.scored import ScoredAttention


def mlp_scores(projected_query: Tensor, projected_keys: Tensor, v: nn.Linear) -> Tensor:
    """``v^T tanh(q' + k')`` for every query/key pair.

    Args:
        projected_query: ``[B, Tq, H]``.
        projected_keys: ``[B, S, H]``.
        v: ``Linear(H, 1)``.

    Returns:
        ``[B, Tq, S]`` scores.
    """
    hidden = torch.tanh(projected_query.unsqueeze(2) + projected_keys.unsqueeze(1))  # [B, Tq, S, H]
    return torch.matmul(hidden, v.weight[0])


class AdditiveAttention(ScoredAttention):
    """``score(q, k) = v^T tanh(W q + U k + b)`` (Bahdanau et al. 2015).

    Args:
        query_dim: ``Dq``.
        key_dim: ``Dk``.
        hidden_dim: size ``H`` of the scoring MLP's hidden layer (default ``key_dim``).
        bias: whether the hidden layer has the bias ``b``.

    Shapes: see :class:`~vlattn.attention.scored.ScoredAttention`.

    Decoders that attend to the same keys at every step can project them once with
    :meth:`project_keys` and pass the result as ``forward(..., projected_keys=...)``.
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int | None = None, bias: bool = True) -> None:
        super().__init__(query_dim, key_dim)
        self.hidden_dim = hidden_dim or key_dim
        self.query_proj = nn.Linear(query_dim, self.hidden_dim, bias=bias)
        self.key_proj = nn.Linear(key_dim, self.hidden_dim, bias=False)
        self.v = nn.Linear(self.hidden_dim, 1, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        """``U k``: ``[B, S, Dk]`` -> ``[B, S, H]``, reusable across decoding steps."""
        return self.key_proj(keys)

    def score(self, query: Tensor, keys: Tensor, projected_keys: Tensor | None = None) -> Tensor:
        """``[B, Tq, Dq]`` x ``[B, S, Dk]`` -> ``[B, Tq, S]`` (``projected_keys`` skips ``U k``)."""
        if projected_keys is None:
            projected_keys = self.key_proj(keys)
        return mlp_scores(self.query_proj(query), projected_keys, self.v)
