"""Scaled dot-product and multi-head attention (``scaled-dot``, ``multihead``).

Vaswani et al., "Attention Is All You Need", NeurIPS 2017:
``Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V``; multi-head attention projects queries,
keys and values ``h`` times, attends in each head and projects the concatenation back.

When weights are not requested (``need_weights=False``) both use
:func:`torch.nn.functional.scaled_dot_product_attention`, which picks a fused kernel where one
exists, and return ``None`` in place of the weights. :class:`MultiHeadAttention` keeps the
parameter names and layout of :class:`torch.nn.MultiheadAttention` (``in_proj_weight``,
``in_proj_bias``, ``out_proj``), so a state dict moves between the two unchanged and the
outputs agree to float rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlattn.attention.base import Attention, as_query_sequence, masked_softmax
from vlattn.attention.errors import AttentionConfigError
from vlattn.attention.scored import check_keys


def attend(
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    mask: Tensor | None,
    need_weights: bool,
    dropout: float = 0.0,
) -> tuple[Tensor, Tensor | None]:
    """``softmax(q k^T / sqrt(d)) v`` over the last two axes, padding masked, rows never NaN.

    Args:
        query: ``[..., Tq, d]``.
        keys: ``[..., S, d]``.
        values: ``[..., S, dv]``.
        mask: boolean broadcastable to ``[..., Tq, S]`` (True = keep), or ``None``.
        need_weights: compute explicitly and return the weights ``[..., Tq, S]``; otherwise
            call the fused kernel and return ``None``.
        dropout: dropout on the weights (pass 0 in eval mode).

    A query whose keys are all masked gets a zero output (and zero weights).
    """
    if need_weights:
        scores = torch.matmul(query, keys.transpose(-2, -1)) / math.sqrt(query.shape[-1])
        weights = masked_softmax(scores, mask)
        dropped = F.dropout(weights, dropout) if dropout > 0 else weights
        return torch.matmul(dropped, values), weights
    empty = None
    if mask is not None:
        empty = ~mask.any(-1, keepdim=True)  # [..., Tq or 1, 1]
        if bool(empty.any()):
            mask = mask | empty  # give empty rows something finite to attend to, zeroed below
        else:
            empty = None
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, dropout_p=dropout)
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return out, None


class ScaledDotAttention(Attention):
    """``softmax(q k^T / sqrt(d)) v`` without parameters; needs ``query_dim == key_dim``.

    Args:
        query_dim: ``d``.
        key_dim: ``d``.
        need_weights: return the weights (computed explicitly); ``False`` uses the fused kernel
            and returns ``None`` for them.
        dropout: dropout probability on the weights during training.

    ``forward(query, keys, values=None, mask=None)``: ``query [B, d]``/``[B, Tq, d]``,
    ``keys [B, S, d]``, ``values [B, S, Dv]``, ``mask [B, S]``. Returns ``context [B, (Tq,) Dv]``
    and ``weights [B, (Tq,) S]`` or ``None``.
    """

    def __init__(self, query_dim: int, key_dim: int, need_weights: bool = True, dropout: float = 0.0) -> None:
        super().__init__(query_dim, key_dim)
        if query_dim != key_dim:
            raise AttentionConfigError(
                f"scaled-dot attention needs query_dim == key_dim, got {query_dim} and {key_dim};"
                " use 'multihead' (it projects both) or 'general'"
            )
        self.need_weights = need_weights
        self.dropout = dropout

    def forward(  # type: ignore[override]
        self, query: Tensor, keys: Tensor, values: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        values = check_keys(keys, values, mask)
        queries, single = as_query_sequence(query)
        keep = None if mask is None else mask.to(torch.bool).unsqueeze(1)
        dropout = self.dropout if self.training else 0.0
        context, weights = attend(queries, keys, values, keep, self.need_weights, dropout)
        if single:
            return context.squeeze(1), None if weights is None else weights.squeeze(1)
        return context, weights


def default_heads(embed_dim: int) -> int:
    """8 heads when they divide ``embed_dim``, else the largest of 4, 2, 1 that does."""
    return next(h for h in (8, 4, 2, 1) if embed_dim % h == 0)


class MultiHeadAttention(Attention):
    """Multi-head attention (Vaswani et al. 2017), layout-compatible with ``nn.MultiheadAttention``.

    Args:
        query_dim: ``Dq``.
        key_dim: ``Dk``.
        num_heads: ``h`` (default: 8 if it divides ``embed_dim``, else 4, 2 or 1).
        embed_dim: ``E``, the projected size and the size of the output (default ``query_dim``).
        value_dim: ``Dv`` of the values (default ``key_dim``).
        dropout: dropout on the attention weights during training.
        bias: biases on the input and output projections.
        need_weights: return the weights (computed explicitly); ``False`` uses
            ``scaled_dot_product_attention`` and returns ``None`` for them.
        average_weights: return weights averaged over heads ``[B, (Tq,) S]``; ``False`` gives
            ``[B, h, (Tq,) S]``.

    ``forward(query, keys, values=None, mask=None)``: ``query [B, Dq]``/``[B, Tq, Dq]``,
    ``keys [B, S, Dk]``, ``values [B, S, Dv]``, ``mask [B, S]`` (True = keep). Returns
    ``context [B, (Tq,) E]`` (a fully masked query gives zeros) and the weights or ``None``.

    When ``Dq == Dk == Dv == E`` the projections are one packed ``in_proj_weight [3E, E]`` as in
    PyTorch, and self-attention (``query is keys``) projects with a single matrix product.
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        num_heads: int | None = None,
        embed_dim: int | None = None,
        value_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        need_weights: bool = True,
        average_weights: bool = True,
    ) -> None:
        super().__init__(query_dim, key_dim)
        self.embed_dim = embed = embed_dim or query_dim
        self.value_dim = value_dim or key_dim
        self.num_heads = num_heads or default_heads(embed)
        if embed % self.num_heads:
            raise AttentionConfigError(f"embed_dim {embed} is not divisible by num_heads {self.num_heads}")
        self.head_dim = embed // self.num_heads
        self.dropout = dropout
        self.need_weights = need_weights
        self.average_weights = average_weights
        self.packed = query_dim == key_dim == self.value_dim == embed
        if self.packed:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed, embed))
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed, query_dim))
            self.k_proj_weight = nn.Parameter(torch.empty(embed, key_dim))
            self.v_proj_weight = nn.Parameter(torch.empty(embed, self.value_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed)) if bias else None
        self.out_proj = nn.Linear(embed, embed, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's initialisation: Xavier-uniform projections, zero biases."""
        if self.packed:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            for weight in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                nn.init.xavier_uniform_(weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def project(self, query: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Input projections: ``[B, Tq, Dq]``, ``[B, S, Dk]``, ``[B, S, Dv]`` -> ``[B, *, E]`` each."""
        bias = self.in_proj_bias
        b_q, b_k, b_v = (None, None, None) if bias is None else bias.chunk(3)
        if not self.packed:
            return (
                F.linear(query, self.q_proj_weight, b_q),
                F.linear(keys, self.k_proj_weight, b_k),
                F.linear(values, self.v_proj_weight, b_v),
            )
        if query is keys and keys is values:
            q, k, v = F.linear(query, self.in_proj_weight, bias).chunk(3, dim=-1)
            return q, k, v
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        if keys is values:
            kv_bias = None if bias is None else bias[self.embed_dim :]
            k, v = F.linear(keys, self.in_proj_weight[self.embed_dim :], kv_bias).chunk(2, dim=-1)
            return F.linear(query, w_q, b_q), k, v
        return F.linear(query, w_q, b_q), F.linear(keys, w_k, b_k), F.linear(values, w_v, b_v)

    def context_size(self, value_dim: int) -> int:
        """``E``: the output projection maps every head's context to ``embed_dim``."""
        return self.embed_dim

    def split_heads(self, x: Tensor) -> Tensor:
        """``[B, T, E]`` -> ``[B, h, T, E / h]``."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(  # type: ignore[override]
        self, query: Tensor, keys: Tensor, values: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        same = values is None or values is keys
        values = check_keys(keys, values, mask)
        queries, single = as_query_sequence(query)
        q, k, v = self.project(queries, keys, keys if same else values)
        keep = None if mask is None else mask.to(torch.bool)[:, None, None, :]  # [B, 1, 1, S]
        dropout = self.dropout if self.training else 0.0
        heads, weights = attend(
            self.split_heads(q),
            self.split_heads(k),
            self.split_heads(v),
            keep,
            self.need_weights,
            dropout,
        )
        context = self.out_proj(heads.transpose(1, 2).flatten(2))  # [B, Tq, E]
        if keep is not None:
            context = context.masked_fill(~mask.to(torch.bool).any(-1)[:, None, None], 0.0)
        if weights is not None and self.average_weights:
            weights = weights.mean(1)
        if single:
            context = context.squeeze(1)
            weights = None if weights is None else weights.squeeze(-2)
        return context, weights
