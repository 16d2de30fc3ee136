"""The common shape of score-based attention: ``score() -> masked softmax -> weighted sum``.

A mechanism that only differs in how it scores a query against the keys subclasses
:class:`ScoredAttention` and implements :meth:`ScoredAttention.score`; query reshaping, masking,
the softmax and the weighted sum live here once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlattn.attention.base import Attention, as_query_sequence, masked_softmax, weighted_sum


def check_keys(keys: Tensor, values: Tensor | None, mask: Tensor | None) -> Tensor:
    """Validate ``keys [B, S, Dk]``, ``values [B, S, Dv]`` and ``mask [B, S]``; return the values.

    Raises:
        ValueError: naming the offending tensor and its shape.
    """
    if keys.dim() != 3:
        raise ValueError(f"keys must be [B, S, Dk], got shape {tuple(keys.shape)}")
    if values is None:
        values = keys
    elif values.dim() != 3 or values.shape[:2] != keys.shape[:2]:
        raise ValueError(
            f"values must be [B, S, Dv] matching keys {tuple(keys.shape[:2])}, got shape {tuple(values.shape)}"
        )
    if mask is not None and tuple(mask.shape) != tuple(keys.shape[:2]):
        raise ValueError(f"mask must be [B, S] = {tuple(keys.shape[:2])}, got {tuple(mask.shape)}")
    return values


def expand_mask(mask: Tensor | None) -> Tensor | None:
    """``[B, S]`` -> ``[B, 1, S]`` boolean (broadcasts over query steps), or ``None``."""
    return None if mask is None else mask.to(dtype=torch.bool).unsqueeze(1)


class ScoredAttention(Attention):
    """Base class of mechanisms defined by a score function ``score(q, k) -> [B, Tq, S]``.

    ``forward(query, keys, values=None, mask=None) -> (context, weights)`` with
    ``query [B, Dq]`` or ``[B, Tq, Dq]``, ``keys [B, S, Dk]``, ``values [B, S, Dv]`` (default
    ``keys``), ``mask [B, S]`` (True = keep). Returns ``context [B, Dv]`` / ``[B, Tq, Dv]`` and
    ``weights [B, S]`` / ``[B, Tq, S]``; padding gets weight 0 and a fully masked row gives zeros.
    """

    def score(self, query: Tensor, keys: Tensor, **options: Tensor) -> Tensor:
        """Raw scores ``[B, Tq, S]`` of ``query [B, Tq, Dq]`` against ``keys [B, S, Dk]``."""
        raise NotImplementedError

    def normalise(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        """Scores ``[B, Tq, S]`` to weights ``[B, Tq, S]``; ``mask`` is ``[B, 1, S]`` or None."""
        return masked_softmax(scores, mask)

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        keys: Tensor,
        values: Tensor | None = None,
        mask: Tensor | None = None,
        **score_options: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """See the class docstring; ``score_options`` go to :meth:`score` (e.g. ``projected_keys``)."""
        values = check_keys(keys, values, mask)
        queries, single = as_query_sequence(query)
        weights = self.normalise(self.score(queries, keys, **score_options), expand_mask(mask))
        context = weighted_sum(weights, values)
        if single:
            return context.squeeze(1), weights.squeeze(1)
        return context, weights
