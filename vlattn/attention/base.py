"""The one interface every attention mechanism follows, and the masking helpers they share."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def masked_softmax(scores: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax of ``scores`` over ``dim`` where ``mask`` is True (keep); masked entries get 0.

    Args:
        scores: ``[..., S]`` raw scores.
        mask: boolean, broadcastable to ``scores``; ``None`` keeps everything.

    A row whose entries are all masked gives all zeros (never NaN).
    """
    if mask is None:
        return torch.softmax(scores, dim=dim)
    mask = mask.to(torch.bool)
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(filled, dim=dim)
    return weights.masked_fill(~mask, 0.0)


def lengths_to_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """``[B]`` lengths to a ``[B, S]`` boolean mask, True on the first ``length`` positions."""
    size = int(max_len if max_len is not None else lengths.max().item() if lengths.numel() else 0)
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


class Attention(nn.Module):
    """Base class of attention mechanisms.

    Every mechanism is built as ``Mechanism(query_dim, key_dim, **options)``; its ``__init__``
    must call ``super().__init__(query_dim, key_dim)`` (it sets up ``nn.Module`` and records the
    two sizes as ``self.query_dim`` / ``self.key_dim``). It is called as
    ``forward(query, keys, values=None, mask=None) -> (context, weights)``:

    Args:
        query: ``[B, Dq]`` (one query per example) or ``[B, Tq, Dq]``; mechanisms that pool
            without a query (the tutorial's layer) accept ``None``.
        keys: ``[B, S, Dk]``; for spatial attention ``S = H * W`` annotation vectors.
        values: ``[B, S, Dv]``; defaults to ``keys``.
        mask: ``[B, S]`` boolean, True = a real position, False = padding.

    Returns:
        context: ``[B, Dv]`` or ``[B, Tq, Dv]``: the weighted sum of ``values`` (``multihead``
            projects it to ``[B, (Tq,) E]``); all 0 for a fully masked row.
        weights: ``[B, S]`` or ``[B, Tq, S]``: non-negative, summing to 1 over kept positions,
            0 on padding, all 0 for a fully masked row. Exceptions, each documented by its
            class: ``local-p`` keeps the paper's Gaussian factor (sums below 1), ``tutorial``
            ignores the mask unless built with ``mask_padding=True``, and mechanisms built with
            ``need_weights=False`` (``scaled-dot``, ``multihead``, ``local-m``, ``local-p``)
            skip computing them and return ``None``.
    """

    query_dim: int
    key_dim: int

    def __init__(self, query_dim: int, key_dim: int) -> None:
        super().__init__()
        self.query_dim = query_dim
        self.key_dim = key_dim

    def context_size(self, value_dim: int) -> int:
        """The context's size ``Dc`` for values of size ``Dv``: ``Dv`` unless the mechanism
        projects its output (multi-head attention returns ``embed_dim``)."""
        return value_dim

    def forward(  # type: ignore[override]
        self,
        query: Tensor | None,
        keys: Tensor,
        values: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


def as_query_sequence(query: Tensor) -> tuple[Tensor, bool]:
    """``[B, Dq]`` -> ``([B, 1, Dq], True)``; ``[B, Tq, Dq]`` passes through with ``False``."""
    if query.dim() == 2:
        return query.unsqueeze(1), True
    if query.dim() == 3:
        return query, False
    raise ValueError(f"query must be [B, Dq] or [B, Tq, Dq], got shape {tuple(query.shape)}")


def weighted_sum(weights: Tensor, values: Tensor) -> Tensor:
    """``weights [B, Tq, S]`` x ``values [B, S, Dv]`` -> ``[B, Tq, Dv]``."""
    return torch.bmm(weights, values)
