"""Scaled dot-product and multi-head attention (``scaled-dot``, ``multihead``).

Vaswani et al., "Attention Is All You Need", NeurIPS 2017:
``Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V``; multi-head attention projects queries,
keys and values ``h`` times, attends in each head and projects the concatenation back.

When weights are not requested (``need_weights=False``) both use
:func:`torch.nn.functional.scaled_dot_product_attention`, which picks a fused kernel where one
exists, and return ``None`` in place of the weights. When they are, multi-head attention without
dropout runs :class:`PackedHeadAttention`: one softmax serves the context, the returned weights
and a hand-written backward pass. :class:`MultiHeadAttention` keeps the
parameter names and layout of :class:`torch.nn.MultiheadAttention` (``in_proj_weight``,
``in_proj_bias``, ``out_proj``), so a state dict moves between the two unchanged and the
outputs agree to float rounding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

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


def heads_first(source: Tensor, parts: int, heads: int) -> Tensor:
    """``[B, T, parts * E]`` -> ``[parts, B * h, T, E / h]``, contiguous (one copy)."""
    batch, steps, width = source.shape
    head_dim = width // (parts * heads)
    split = source.reshape(batch, steps, parts, heads, head_dim).permute(2, 0, 3, 1, 4)
    return split.reshape(parts, batch * heads, steps, head_dim)


def heads_last(grouped: Tensor, batch: int) -> Tensor:
    """``[parts, B * h, T, d]`` -> ``[B, T, parts * h * d]``, the inverse of :func:`heads_first`."""
    parts, flat, steps, head_dim = grouped.shape
    heads = flat // batch
    split = grouped.view(parts, batch, heads, steps, head_dim).permute(1, 3, 0, 2, 4)
    return split.reshape(batch, steps, parts * heads * head_dim)


# how many of q, k, v each source holds, by number of sources
SOURCE_PARTS: dict[int, tuple[int, ...]] = {1: (3,), 2: (1, 2), 3: (1, 1, 1)}


class PackedHeadAttention(torch.autograd.Function):
    """Softmax attention over heads, returning the weights, with a hand-written backward (no dropout).

    ``apply(bias, empty, heads, average, *sources)``:

    * ``sources``: the projections ``[B, T, parts * E]``, in order q, k, v: one ``[B, T, 3E]``
      (self-attention), ``q [B, Tq, E]`` and ``kv [B, S, 2E]``, or ``q``, ``k``, ``v``.
    * ``bias``: additive ``[B * h, 1, S]`` (0 = keep, ``-inf`` = padding) or ``None``.
    * ``empty``: ``[B * h, 1, 1]`` boolean, True for an example without keys (its weights are
      set to 0; its ``bias`` row must be finite), or ``None``.
    * ``average``: return the weights averaged over heads ``[B, Tq, S]``, else ``[B, h, Tq, S]``.

    Returns ``context [B, Tq, E]`` (heads concatenated, before the output projection) and the
    weights. The scores (with the bias) and the weighted sum are one batched product each; the
    softmax is computed once and serves the context, the weights and the backward pass, which
    takes gradients from both outputs.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        bias: Tensor | None,
        empty: Tensor | None,
        heads: int,
        average: bool,
        *sources: Tensor,
    ) -> tuple[Tensor, Tensor]:
        layout = [(parts, s.shape[1]) for s, parts in zip(sources, SOURCE_PARTS[len(sources)], strict=True)]
        grouped = [heads_first(s, parts, heads) for s, (parts, _) in zip(sources, layout, strict=True)]
        q, k, v = (head for group in grouped for head in group)  # [B * h, T, d] each
        batch, steps = sources[0].shape[:2]
        scale = q.shape[-1] ** -0.5
        if bias is None:
            scores = torch.baddbmm(q.new_empty(1, 1, 1), q, k.transpose(1, 2), beta=0.0, alpha=scale)
        else:
            scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale)
        probs = torch.softmax(scores, dim=-1)
        del scores
        if empty is not None:
            probs.masked_fill_(empty, 0.0)
        context = heads_last(torch.bmm(probs, v).unsqueeze(0), batch)
        ctx.set_materialize_grads(False)
        ctx.heads, ctx.average, ctx.scale, ctx.layout = heads, average, scale, layout
        ctx.save_for_backward(q, k, v, probs)
        per_head = probs.view(batch, heads, steps, -1)
        return context, per_head.mean(1) if average else per_head

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_context: Tensor | None, d_weights: Tensor | None = None) -> tuple[Tensor | None, ...]:
        q, k, v, probs = ctx.saved_tensors
        flat, steps, head_dim = q.shape
        heads = ctx.heads
        batch = flat // heads
        no_context = d_context is None
        d_heads = q.new_zeros(flat, steps, v.shape[-1]) if no_context else heads_first(d_context, 1, heads)[0]
        d_probs = torch.bmm(d_heads, v.transpose(1, 2))  # [B * h, Tq, S]
        if d_weights is not None:
            per_head = d_probs.view(batch, heads, steps, -1)
            if ctx.average:
                per_head.add_(d_weights.unsqueeze(1), alpha=1.0 / heads)
            else:
                per_head.add_(d_weights)
        d_scores = torch._softmax_backward_data(d_probs, probs, -1, probs.dtype)
        del d_probs
        grads = [q.new_empty(parts, flat, length, head_dim) for parts, length in ctx.layout]
        d_q, d_k, d_v = (head for group in grads for head in group)
        torch.baddbmm(d_q, d_scores, k, beta=0.0, alpha=ctx.scale, out=d_q)
        torch.baddbmm(d_k, d_scores.transpose(1, 2), q, beta=0.0, alpha=ctx.scale, out=d_k)
        torch.bmm(probs.transpose(1, 2), d_heads, out=d_v)
        return (None, None, None, None, *(heads_last(g, batch) for g in grads))


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


def examples_without_keys(keep: Tensor) -> Tensor | None:
    """``keep [B, S]`` boolean -> ``[B]`` True where no key is kept, or ``None`` if there is none."""
    empty = ~keep.any(-1)
    return empty if bool(empty.any()) else None


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
        need_weights: return the weights (computed explicitly: without dropout one softmax
            serves the context, the weights and a hand-written backward); ``False`` uses
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

    def packed_sources(self, query: Tensor, keys: Tensor, values: Tensor) -> list[Tensor]:
        """The input projections as :class:`PackedHeadAttention` takes them: one ``[B, T, 3E]``
        product for self-attention, ``q`` and one ``[B, S, 2E]`` when keys are the values, else three."""
        weight, bias = self.in_proj_weight if self.packed else None, self.in_proj_bias
        if weight is not None and query is keys and keys is values:
            return [F.linear(query, weight, bias)]
        if weight is not None and keys is values:
            embed = self.embed_dim
            b_q, b_kv = (None, None) if bias is None else (bias[:embed], bias[embed:])
            return [F.linear(query, weight[:embed], b_q), F.linear(keys, weight[embed:], b_kv)]
        return list(self.project(query, keys, values))

    def key_bias(self, mask: Tensor | None, dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None]:
        """``mask [B, S]`` -> additive bias ``[B, 1, 1, S]`` (0 keep, ``-inf`` padding) and the
        examples without keys ``[B]`` (``None`` when every example has one), whose bias is all 0."""
        if mask is None:
            return None, None
        keep = mask.to(torch.bool)
        empty = examples_without_keys(keep)
        if empty is not None:
            keep = keep | empty[:, None]
        bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, -math.inf)
        return bias[:, None, None, :], empty

    def attend_explicit(
        self, queries: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Weights requested, no dropout: :class:`PackedHeadAttention`.

        Returns ``heads [B, Tq, E]`` (before ``out_proj``), the weights, and the examples
        without keys ``[B]`` or ``None``.
        """
        bias, empty = self.key_bias(mask, queries.dtype)
        heads = self.num_heads
        if bias is not None:
            batch, source = bias.shape[0], bias.shape[-1]
            bias = bias.expand(batch, heads, 1, source).reshape(batch * heads, 1, source)
        empty_heads = None if empty is None else empty.repeat_interleave(heads)[:, None, None]
        sources = self.packed_sources(queries, keys, values)
        context, weights = PackedHeadAttention.apply(bias, empty_heads, heads, self.average_weights, *sources)
        return context, weights, empty

    def attend_fused(
        self, queries: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None, dropout: float
    ) -> tuple[Tensor, None, Tensor | None]:
        """No weights: ``scaled_dot_product_attention``; returns like :meth:`attend_explicit`."""
        bias, empty = self.key_bias(mask, queries.dtype)
        q, k, v = (self.split_heads(x) for x in self.project(queries, keys, values))
        heads = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        return heads.transpose(1, 2).flatten(2), None, empty

    def attend_with_dropout(
        self, queries: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None, dropout: float
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Weights requested, with dropout on them: explicit, autograd's backward; returns like
        :meth:`attend_explicit`."""
        q, k, v = (self.split_heads(x) for x in self.project(queries, keys, values))
        keep = None if mask is None else mask.to(torch.bool)[:, None, None, :]  # [B, 1, 1, S]
        heads, weights = attend(q, k, v, keep, True, dropout)
        if weights is not None and self.average_weights:
            weights = weights.mean(1)
        empty = None if mask is None else examples_without_keys(mask.to(torch.bool))
        return heads.transpose(1, 2).flatten(2), weights, empty

    def forward(  # type: ignore[override]
        self, query: Tensor, keys: Tensor, values: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        values = check_keys(keys, values, mask)
        queries, single = as_query_sequence(query)
        dropout = self.dropout if self.training else 0.0
        if not self.need_weights:
            heads, weights, empty = self.attend_fused(queries, keys, values, mask, dropout)
        elif dropout > 0:
            heads, weights, empty = self.attend_with_dropout(queries, keys, values, mask, dropout)
        else:
            heads, weights, empty = self.attend_explicit(queries, keys, values, mask)
        context = self.out_proj(heads)  # [B, Tq, E]
        if empty is not None:
            context = context.masked_fill(empty[:, None, None], 0.0)
        if single:
            context = context.squeeze(1)
            weights = None if weights is None else weights.squeeze(-2)
        return context, weights
