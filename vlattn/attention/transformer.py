"""Sinusoidal positional encoding and a Transformer encoder built on :class:`MultiHeadAttention`.

Vaswani et al., "Attention Is All You Need", NeurIPS 2017, sections 3.1 to 3.5. The layer keeps
the sub-module names of :class:`torch.nn.TransformerEncoderLayer` (``self_attn``, ``linear1``,
``linear2``, ``norm1``, ``norm2``), so weights move between the two unchanged.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlattn.attention.errors import AttentionConfigError
from vlattn.attention.multihead import MultiHeadAttention


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """``[length, dim]`` with ``PE[p, 2i] = sin(p / 10000^(2i/dim))`` and ``PE[p, 2i+1] = cos(...)``."""
    position = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    rates = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * rates)
    table[:, 1::2] = torch.cos(position * rates[: dim // 2])
    return table.float()


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal position table to ``x [B, T, D]`` (then optional dropout).

    Args:
        dim: ``D``.
        max_len: the longest sequence; the table is a non-persistent buffer (not saved).
        dropout: dropout applied after the addition (the paper uses 0.1).
    """

    table: Tensor

    def __init__(self, dim: int, max_len: int = 4096, dropout: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_len, dim), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """``x [B, T, D]`` -> ``x + PE[offset : offset + T]``."""
        end = offset + x.shape[1]
        if end > self.table.shape[0]:
            raise AttentionConfigError(f"sequence of {end} positions exceeds max_len {self.table.shape[0]}")
        return self.dropout(x + self.table[offset:end].to(x.dtype))


class TransformerEncoderLayer(nn.Module):
    """Self-attention and a position-wise feed-forward block, each with residual and LayerNorm.

    Post-norm (the paper): ``x = norm1(x + attn(x)); x = norm2(x + ff(x))``.
    Pre-norm (``norm_first=True``, steadier for deep stacks):
    ``x = x + attn(norm1(x)); x = x + ff(norm2(x))``.

    Args:
        dim: model size ``D``.
        num_heads: attention heads (default: 8 if they divide ``D``, else 4, 2 or 1).
        ff_dim: hidden size of the feed-forward block (default ``4 * D``).
        dropout: dropout on the attention weights, after each sub-block and inside the FF block.
        activation: ``"relu"`` (the paper) or ``"gelu"``.
        norm_first: pre-norm instead of post-norm.
        layer_norm_eps: LayerNorm epsilon.

    Set :attr:`need_weights` to keep the last call's attention weights ``[B, T, T]`` in
    :attr:`attention_weights` (slower: the fused kernel is skipped).
    """

    attention_weights: Tensor | None

    def __init__(
        self,
        dim: int,
        num_heads: int | None = None,
        ff_dim: int | None = None,
        dropout: float = 0.1,
        activation: Literal["relu", "gelu"] = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if activation not in ("relu", "gelu"):
            raise AttentionConfigError(f"activation must be 'relu' or 'gelu', got {activation!r}")
        self.self_attn = MultiHeadAttention(dim, dim, num_heads=num_heads, dropout=dropout, need_weights=False)
        self.linear1 = nn.Linear(dim, ff_dim or 4 * dim)
        self.linear2 = nn.Linear(ff_dim or 4 * dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = F.relu if activation == "relu" else F.gelu
        self.norm_first = norm_first
        self.attention_weights = None

    @property
    def need_weights(self) -> bool:
        """Whether the attention weights of each call are kept."""
        return self.self_attn.need_weights

    @need_weights.setter
    def need_weights(self, value: bool) -> None:
        self.self_attn.need_weights = value

    def attention_block(self, x: Tensor, mask: Tensor | None) -> Tensor:
        context, self.attention_weights = self.self_attn(x, x, mask=mask)
        return self.dropout1(context)

    def feed_forward_block(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x [B, T, D]``, ``mask [B, T]`` (True = real token) -> ``[B, T, D]``."""
        if self.norm_first:
            x = x + self.attention_block(self.norm1(x), mask)
            return x + self.feed_forward_block(self.norm2(x))
        x = self.norm1(x + self.attention_block(x, mask))
        return self.norm2(x + self.feed_forward_block(x))


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerEncoderLayer` (plus a final LayerNorm when pre-norm).

    Args:
        dim: model size ``D``.
        num_layers: number of layers.
        **layer_options: passed to every :class:`TransformerEncoderLayer`.
    """

    def __init__(self, dim: int, num_layers: int = 2, **layer_options: object) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(dim, **layer_options)  # type: ignore[arg-type]
            for _ in range(num_layers)
        )
        norm_first = bool(layer_options.get("norm_first", False))
        self.norm = nn.LayerNorm(dim) if norm_first else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x [B, T, D]``, ``mask [B, T]`` -> ``[B, T, D]``."""
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)
