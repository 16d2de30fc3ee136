"""A small Transformer encoder sentence classifier with attention pooling.

Embedding (scaled by ``sqrt(D)``) + sinusoidal positions -> :class:`vlattn.attention.transformer.
TransformerEncoder` (padding masked) -> pooling by any registered attention mechanism -> classifier.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vlattn.attention import lengths_to_mask
from vlattn.attention.transformer import SinusoidalPositionalEncoding, TransformerEncoder
from vlattn_text.models import ClassifierOutput, QueryKind, WordEmbedding, add_pooling_head


class TransformerClassifier(nn.Module):
    """``ids [B, T]``, ``lengths [B]`` -> :class:`ClassifierOutput` (``weights [B, T]``: the pooling's).

    Args:
        vocab_size: embedding rows; index 0 is padding.
        num_classes: classes.
        embed_dim: model size ``D``.
        ff_dim: feed-forward size of each layer.
        layers: encoder layers.
        heads: self-attention heads.
        max_len: the longest input (size of the position table).
        attention: pooling mechanism name (``"none"``: masked mean of the encoder outputs).
        attention_options: its keyword options.
        query: ``learned`` vector or masked ``mean`` of the outputs (``last`` means ``mean`` here).
        dropout: dropout inside the encoder and before the classifier.
        embed_dropout: dropout on the embedded input.
        word_dropout: in training, replace this fraction of tokens by ``unk_index``.
        unk_index: the OOV index (``None`` disables word dropout).
        subword_buckets: add hashed character n-gram vectors to word vectors (0 = off).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        embed_dim: int = 128,
        ff_dim: int = 256,
        layers: int = 1,
        heads: int = 4,
        max_len: int = 512,
        attention: str = "additive",
        attention_options: dict[str, Any] | None = None,
        query: QueryKind = "learned",
        dropout: float = 0.3,
        embed_dropout: float = 0.2,
        word_dropout: float = 0.0,
        unk_index: int | None = None,
        subword_buckets: int = 0,
    ) -> None:
        super().__init__()
        self.embedding = WordEmbedding(vocab_size, embed_dim, subword_buckets)
        self.scale = embed_dim**0.5
        self.positions = SinusoidalPositionalEncoding(embed_dim, max_len=max(max_len, 1), dropout=embed_dropout)
        self.encoder = TransformerEncoder(embed_dim, num_layers=layers, num_heads=heads, ff_dim=ff_dim, dropout=dropout)
        self.word_dropout = word_dropout if unk_index is not None else 0.0
        self.unk_index = unk_index
        add_pooling_head(
            self,
            embed_dim,
            num_classes,
            attention=attention,
            attention_options=attention_options,
            query=query,
            dropout=dropout,
        )

    def forward(self, ids: Tensor, lengths: Tensor, subwords: Tensor | None = None) -> ClassifierOutput:
        if self.training and self.word_dropout > 0 and self.unk_index is not None:
            drop = torch.rand(ids.shape, device=ids.device) < self.word_dropout
            ids = ids.masked_fill(drop & (ids > 0), self.unk_index)
        mask = lengths_to_mask(lengths, ids.shape[1])
        states = self.encoder(self.positions(self.embedding(ids, subwords) * self.scale), mask)
        states = states.masked_fill(~mask.unsqueeze(-1), 0.0)
        mean = states.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        if self.attention_name == "none":
            return ClassifierOutput(self.classifier(self.dropout(mean)), None)
        query = self.query.expand(ids.shape[0], -1) if self.query_kind == "learned" else mean
        context, weights = self.attention(query, states, mask=mask)
        if weights is not None and weights.dim() == 3:
            weights = weights.mean(1)
        return ClassifierOutput(self.classifier(self.dropout(context)), weights)
