"""A third-party attention mechanism that plugs into every model taking a mechanism by name."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlattn.attention import Attention, masked_softmax


class CosineAttention(Attention):
    """Weights from the cosine similarity of a projected query and each key.

    Args:
        query_dim: ``Dq``. key_dim: ``Dk``.
        init_temperature: initial inverse temperature (learned, kept in log space).

    ``forward(query [B, Dq] | [B, Tq, Dq], keys [B, S, Dk], values [B, S, Dv] | None,
    mask [B, S] | None) -> (context [B, (Tq,) Dv], weights [B, (Tq,) S])``.
    """

    def __init__(self, query_dim: int, key_dim: int, init_temperature: float = 5.0) -> None:
        super().__init__(query_dim, key_dim)
        self.project = nn.Linear(query_dim, key_dim, bias=False)
        self.log_temperature = nn.Parameter(torch.tensor(float(init_temperature)).log())

    def forward(  # type: ignore[override]
        self, query: Tensor, keys: Tensor, values: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        single = query.dim() == 2
        q = self.project(query.unsqueeze(1) if single else query)  # [B, Tq, Dk]
        scores = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(keys, dim=-1).transpose(1, 2)
        scores = scores * self.log_temperature.exp()  # [B, Tq, S]
        weights = masked_softmax(scores, None if mask is None else mask[:, None, :])
        context = weights @ (keys if values is None else values)
        if single:
            return context.squeeze(1), weights.squeeze(1)
        return context, weights
