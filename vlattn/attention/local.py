"""Luong's local attention: ``local-m`` (monotonic) and ``local-p`` (predictive).

Luong, Pham and Manning (2015), section 3.2. Each query ``h_t`` attends only to the window
``[p_t - D, p_t + D]`` of source positions around an aligned position ``p_t``:

* ``local-m``: ``p_t = t`` (source and target assumed monotonically aligned); the weights are
  the softmax of the scores inside the window.
* ``local-p``: ``p_t = S_b * sigmoid(v_p^T tanh(W_p h_t))`` with ``S_b`` the example's true
  length; the window softmax is multiplied by ``exp(-(s - p_t)^2 / (2 sigma^2))`` with
  ``sigma = D / 2``. ``p_t`` stays real-valued, so gradients reach ``W_p`` and ``v_p``
  through the Gaussian. As in the paper, the result is not renormalised, so the weights sum to
  less than 1 (``renormalise=True`` divides by their sum).

Only the ``2D + 1`` keys of each window are gathered and scored, so time and memory grow
with ``Tq * (2D + 1)`` rather than ``Tq * S``. With ``need_weights=False`` the dense
``[B, Tq, S]`` weights are not built and ``None`` is returned in their place.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from vlattn.attention.base import Attention, as_query_sequence, masked_softmax
from vlattn.attention.errors import AttentionConfigError
from vlattn.attention.scored import check_keys

ScoreName = Literal["dot", "general", "concat"]


class WindowScorer(nn.Module):
    """Luong's ``dot``, ``general`` or ``concat`` score, applied to gathered key windows.

    ``project_keys`` runs once per source position; ``forward`` scores ``query [B, Tq, Dq]``
    against projected key windows ``[B, Tq, W, X]`` and returns ``[B, Tq, W]``.
    """

    def __init__(self, kind: ScoreName, query_dim: int, key_dim: int) -> None:
        super().__init__()
        self.kind = kind
        self.query_proj: nn.Linear | None = None
        self.key_proj: nn.Linear | None = None
        self.v: nn.Linear | None = None
        if kind == "dot":
            if query_dim != key_dim:
                raise AttentionConfigError(f"the dot score needs query_dim == key_dim, got {query_dim} and {key_dim}")
        elif kind == "general":
            self.query_proj = nn.Linear(query_dim, key_dim, bias=False)
        elif kind == "concat":
            self.query_proj = nn.Linear(query_dim, key_dim, bias=False)
            self.key_proj = nn.Linear(key_dim, key_dim, bias=False)
            self.v = nn.Linear(key_dim, 1, bias=False)
        else:
            raise AttentionConfigError(f"score must be 'dot', 'general' or 'concat', got {kind!r}")

    def project_keys(self, keys: Tensor) -> Tensor:
        """``[B, S, Dk]`` -> ``[B, S, X]``."""
        return keys if self.key_proj is None else self.key_proj(keys)

    def forward(self, query: Tensor, key_windows: Tensor) -> Tensor:
        """``query [B, Tq, Dq]`` x ``key_windows [B, Tq, W, X]`` -> scores ``[B, Tq, W]``."""
        q = query if self.query_proj is None else self.query_proj(query)
        if self.v is None:
            return (q.unsqueeze(2) * key_windows).sum(-1)
        return self.v(torch.tanh(q.unsqueeze(2) + key_windows)).squeeze(-1)


def gather_windows(projected: Tensor, index: Tensor) -> Tensor:
    """``projected [B, S, X]`` at ``index [B, Tq, W]`` (valid positions) -> ``[B, Tq, W, X]``."""
    batch, source, size = projected.shape
    offsets = torch.arange(batch, device=index.device).view(batch, 1, 1) * source
    rows = projected.reshape(batch * source, size).index_select(0, (index + offsets).flatten())
    return rows.view(*index.shape, size)


class LocalAttention(Attention):
    """Shared machinery of ``local-m`` and ``local-p``: windows, scores, weights, context.

    Args:
        query_dim: ``Dq``.
        key_dim: ``Dk``.
        window: the half-width ``D`` (the window holds ``2D + 1`` positions; paper: 10).
        score: ``"general"`` (the paper's choice for local models), ``"dot"`` or ``"concat"``.
        need_weights: build the dense ``[B, Tq, S]`` weights (else ``None`` is returned).
    """

    gaussian: bool = False

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        window: int = 10,
        score: ScoreName = "general",
        need_weights: bool = True,
    ) -> None:
        super().__init__(query_dim, key_dim)
        if window < 0:
            raise AttentionConfigError(f"window must be >= 0, got {window}")
        self.window = window
        self.need_weights = need_weights
        self.scorer = WindowScorer(score, query_dim, key_dim)
        self.renormalise = False

    def aligned_positions(self, queries: Tensor, lengths: Tensor, single: bool, positions: Tensor | None) -> Tensor:
        """Real-valued ``p_t [B, Tq]`` for ``queries [B, Tq, Dq]`` and true ``lengths [B]``."""
        raise NotImplementedError

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        keys: Tensor,
        values: Tensor | None = None,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``query [B, Dq]``/``[B, Tq, Dq]``, ``keys [B, S, Dk]``, ``values [B, S, Dv]``,
        ``mask [B, S]``; ``positions [B]``/``[B, Tq]`` only for ``local-m`` (see its class).

        Returns ``context [B, (Tq,) Dv]`` and ``weights [B, (Tq,) S]`` (or ``None``).
        """
        values = check_keys(keys, values, mask)
        queries, single = as_query_sequence(query)
        batch, source = keys.shape[:2]
        if mask is None:
            mask = torch.ones(batch, source, dtype=torch.bool, device=keys.device)
        mask = mask.to(torch.bool)
        lengths = mask.sum(-1)
        centre = self.aligned_positions(queries, lengths, single, positions)  # [B, Tq] real

        offsets = torch.arange(-self.window, self.window + 1, device=keys.device)
        raw_index = centre.detach().round().long().unsqueeze(-1) + offsets  # [B, Tq, W]
        index = raw_index.clamp(0, max(source - 1, 0))
        inside = (raw_index >= 0) & (raw_index < source)
        inside &= (raw_index - centre.detach().unsqueeze(-1)).abs() <= self.window
        inside &= mask.gather(1, index.flatten(1)).view_as(index)

        key_windows = gather_windows(self.scorer.project_keys(keys), index)
        weights = masked_softmax(self.scorer(queries, key_windows), inside)  # [B, Tq, W]
        if self.gaussian:
            sigma = self.window / 2 if self.window > 0 else 0.5
            distance = index.to(weights.dtype) - centre.unsqueeze(-1)
            weights = weights * torch.exp(-(distance**2) / (2 * sigma**2))
            if self.renormalise:
                total = weights.sum(-1, keepdim=True)
                weights = weights / torch.where(total > 0, total, torch.ones_like(total))

        value_windows = gather_windows(values, index)  # [B, Tq, W, Dv]
        context = (weights.unsqueeze(-1) * value_windows).sum(2)
        dense = None
        if self.need_weights:
            dense = weights.new_zeros(batch, queries.shape[1], source)
            dense = dense.scatter_add(2, index, weights)
        if single:
            return context.squeeze(1), None if dense is None else dense.squeeze(1)
        return context, dense


class LocalMonotonicAttention(LocalAttention):
    """``local-m``: the window is centred on ``p_t = t``.

    Positions: for a query sequence ``[B, Tq, Dq]``, ``p_t = min(t, S_b - 1)`` (clamped to the
    example's last real position ``S_b - 1``, so a target longer than its source keeps
    attending the source's end). For a single query ``[B, Dq]`` (one decoding step) pass the
    step as ``positions`` (``[B]``); without it the last real position ``S_b - 1`` is used.
    ``positions`` (``[B]`` or ``[B, Tq]``) overrides the default in both cases and is clamped
    to ``[0, S_b - 1]`` likewise.

    Args: see :class:`LocalAttention`.
    """

    def aligned_positions(self, queries: Tensor, lengths: Tensor, single: bool, positions: Tensor | None) -> Tensor:
        last = (lengths - 1).clamp_min(0).to(queries.dtype).unsqueeze(1)  # [B, 1]
        if positions is not None:
            p = positions.to(device=queries.device, dtype=queries.dtype)
            p = (p.unsqueeze(1) if p.dim() == 1 else p).expand(queries.shape[0], queries.shape[1])
        elif single:
            return last
        else:
            p = torch.arange(queries.shape[1], device=queries.device, dtype=queries.dtype)
            p = p.unsqueeze(0)
        return torch.minimum(p.clamp_min(0), last)


class LocalPredictiveAttention(LocalAttention):
    """``local-p``: ``p_t = S_b * sigmoid(v_p^T tanh(W_p h_t))``, Gaussian-weighted window.

    Args:
        query_dim: ``Dq``.
        key_dim: ``Dk``.
        window: the half-width ``D``; the Gaussian has ``sigma = D / 2``.
        score: ``"general"``, ``"dot"`` or ``"concat"``.
        hidden_dim: rows of ``W_p`` (default ``query_dim``).
        renormalise: divide the Gaussian-weighted weights by their sum (off, as in the paper).
        need_weights: build the dense ``[B, Tq, S]`` weights (else ``None`` is returned).
    """

    gaussian = True

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        window: int = 10,
        score: ScoreName = "general",
        hidden_dim: int | None = None,
        renormalise: bool = False,
        need_weights: bool = True,
    ) -> None:
        super().__init__(query_dim, key_dim, window=window, score=score, need_weights=need_weights)
        self.W_p = nn.Linear(query_dim, hidden_dim or query_dim, bias=False)
        self.v_p = nn.Linear(hidden_dim or query_dim, 1, bias=False)
        self.renormalise = renormalise

    def aligned_positions(self, queries: Tensor, lengths: Tensor, single: bool, positions: Tensor | None) -> Tensor:
        if positions is not None:
            raise ValueError("local-p predicts its positions; 'positions' is for local-m")
        fraction = torch.sigmoid(self.v_p(torch.tanh(self.W_p(queries)))).squeeze(-1)
        return lengths.to(queries.dtype).unsqueeze(1) * fraction  # [B, Tq]
