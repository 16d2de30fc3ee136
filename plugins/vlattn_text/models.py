"""Sentence classifiers: the tutorial's two Keras models, and recurrent models with any attention.

Every model is called as ``model(ids, lengths, subwords=None) -> ClassifierOutput`` with
``ids [B, T]`` (0 = padding), ``lengths [B]`` and optional hashed character n-grams
``subwords [B, T, K]`` (used by models built with ``subword_buckets``). ``logits`` is ``[B, 1]``
for two classes (a sigmoid output, as in the tutorial) and ``[B, C]`` otherwise; ``weights`` is
``[B, T]`` attention over the positions, or ``None`` for a model without attention.

The tutorial models (:class:`TutorialLSTM`, :class:`TutorialAttention`) reproduce the Keras
recipe, padding included: the LSTM reads the post-padding, as a Keras LSTM without masking does.
:class:`RecurrentClassifier` masks properly: packed sequences, and attention masks that give
padding zero weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vlattn.attention import build_attention, lengths_to_mask


@dataclass
class ClassifierOutput:
    """``logits [B, 1]`` (binary) or ``[B, C]``; ``weights [B, T]`` attention or ``None``;
    ``members [K, B, C]``: the member logits of an ensemble (trained one loss each), else ``None``."""

    logits: Tensor
    weights: Tensor | None
    members: Tensor | None = None


def output_size(num_classes: int) -> int:
    """One sigmoid unit for two classes, one logit per class otherwise."""
    return 1 if num_classes == 2 else num_classes


def add_pooling_head(
    module: nn.Module,
    width: int,
    num_classes: int,
    *,
    attention: str,
    attention_options: dict[str, Any] | None,
    query: str,
    dropout: float,
) -> None:
    """Give ``module`` what every attention-pooled classifier here has, under the same names:
    ``attention`` (the mechanism, unless ``"none"``), ``query`` (``[W]``, for a learned query),
    ``dropout`` and ``classifier`` (``W`` -> :func:`output_size`); plus ``attention_name`` and
    ``query_kind``."""
    module.attention_name, module.query_kind = attention, query
    if attention != "none":
        module.attention = build_attention(attention, width, width, **(attention_options or {}))
        if query == "learned":
            module.query = nn.Parameter(torch.randn(width) * width**-0.5)
    module.dropout = nn.Dropout(dropout)
    module.classifier = nn.Linear(width, output_size(num_classes))


def keras_lstm_init(lstm: nn.LSTM) -> None:
    """Keras' LSTM initialisation: Glorot-uniform input kernel, orthogonal recurrent kernel,
    zero biases except 1 on the forget gate (``unit_forget_bias``). Gate order i, f, g, o matches."""
    hidden = lstm.hidden_size
    for name, param in lstm.named_parameters():
        if name.startswith("weight_ih"):
            # Keras draws one [input, 4 * hidden] matrix: Glorot over that whole shape.
            bound = (6.0 / (param.shape[1] + param.shape[0])) ** 0.5
            nn.init.uniform_(param, -bound, bound)
        elif name.startswith("weight_hh"):
            with torch.no_grad():  # Keras: one orthogonal [hidden, 4 * hidden] matrix
                q = torch.empty(hidden, 4 * hidden)
                nn.init.orthogonal_(q)
                param.copy_(q.T)
        elif name.startswith("bias_ih"):
            nn.init.zeros_(param)
            with torch.no_grad():
                param[hidden : 2 * hidden] = 1.0
        elif name.startswith("bias_hh"):
            nn.init.zeros_(param)


def keras_dense_init(linear: nn.Linear) -> None:
    """Keras' Dense initialisation: Glorot-uniform kernel, zero bias."""
    nn.init.xavier_uniform_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class WordEmbedding(nn.Module):
    """Word vectors, optionally plus the mean of the word's hashed character n-gram vectors.

    ``ids [B, T]`` (0 = padding) and ``subwords [B, T, K]`` (0 = no n-gram) -> ``[B, T, D]``.

    Args:
        vocab_size: word rows.
        dim: ``D``.
        subword_buckets: n-gram hash buckets (0 = words only; see :mod:`vlattn_text.subwords`).
    """

    def __init__(self, vocab_size: int, dim: int, subword_buckets: int = 0) -> None:
        super().__init__()
        self.words = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.subwords = nn.Embedding(subword_buckets + 1, dim, padding_idx=0) if subword_buckets > 0 else None

    @property
    def weight(self) -> Tensor:
        """The word embedding matrix (what an embedding L2 penalty applies to)."""
        return self.words.weight

    def forward(self, ids: Tensor, subwords: Tensor | None = None) -> Tensor:
        vectors = self.words(ids)
        if self.subwords is None or subwords is None or subwords.shape[-1] == 0:
            return vectors
        # One bag of n-grams per word, summed without building the [B, T, K, D] tensor of their vectors.
        flat = subwords.reshape(-1, subwords.shape[-1])
        summed = nn.functional.embedding_bag(flat, self.subwords.weight, mode="sum", padding_idx=0)
        counts = (subwords > 0).sum(-1, keepdim=True).clamp(min=1)
        return vectors + summed.view(*subwords.shape[:-1], -1) / counts


class SharedInputDropout(nn.Module):
    """Dropout with one mask per sequence, shared by every time step (Keras' LSTM ``dropout``).

    ``[B, T, D] -> [B, T, D]``.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p <= 0:
            return x
        keep = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - self.p) / (1 - self.p)
        return x * keep


class TutorialLSTM(nn.Module):
    """The tutorial's baseline: Embedding(V, 32) -> LSTM(100, dropout 0.2) -> Dense(1, sigmoid).

    The LSTM runs over all ``T`` (padded) positions and the classifier reads its last state.

    Args:
        vocab_size: embedding rows (padding included).
        num_classes: classes (2 gives one sigmoid output).
        embed_dim, hidden_size, dropout: the tutorial's 32, 100 and 0.2 by default.
    """

    def __init__(
        self, vocab_size: int, num_classes: int, embed_dim: int = 32, hidden_size: int = 100, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)  # Keras' default
        self.input_dropout = SharedInputDropout(dropout)
        self.lstm = nn.LSTM(embed_dim, hidden_size, batch_first=True)
        keras_lstm_init(self.lstm)
        self.classifier = nn.Linear(hidden_size, output_size(num_classes))
        keras_dense_init(self.classifier)

    def encode(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """``ids [B, T]`` -> ``(states [B, T, H], last [B, H])``, padding read like real tokens."""
        states, (h_n, _) = self.lstm(self.input_dropout(self.embedding(ids)))
        return states, h_n[-1]

    def forward(self, ids: Tensor, lengths: Tensor, subwords: Tensor | None = None) -> ClassifierOutput:
        _, last = self.encode(ids)
        return ClassifierOutput(self.classifier(last), None)


class TutorialAttention(TutorialLSTM):
    """The tutorial's attention model: the LSTM's ``T`` states pooled by an attention mechanism
    (``tutorial`` by default: ``softmax(tanh(x W + b))`` with a bias per position), then Dense.

    As in Keras, the pooling sees every position, padding included (no mask).

    Args:
        max_len: ``T``, the fixed padded length (the mechanism's per-position bias needs it).
        attention: registered mechanism name; it is called with ``query=None``.
        attention_options: extra keyword options of the mechanism.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        max_len: int,
        embed_dim: int = 32,
        hidden_size: int = 100,
        dropout: float = 0.2,
        attention: str = "tutorial",
        attention_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(vocab_size, num_classes, embed_dim, hidden_size, dropout)
        options = {"steps": max_len, **(attention_options or {})}
        self.attention = build_attention(attention, hidden_size, hidden_size, **options)

    def forward(self, ids: Tensor, lengths: Tensor, subwords: Tensor | None = None) -> ClassifierOutput:
        states, _ = self.encode(ids)
        context, weights = self.attention(None, states)
        return ClassifierOutput(self.classifier(context), weights)


QueryKind = Literal["learned", "last", "mean"]


class RecurrentClassifier(nn.Module):
    """Embedding -> (Bi)LSTM/GRU (packed, padding never read) -> attention pooling -> classifier.

    Args:
        vocab_size: embedding rows; index 0 is padding (a zero vector).
        num_classes: classes.
        embed_dim: word vector size.
        hidden_size: units per direction.
        cell: ``"lstm"`` or ``"gru"``.
        bidirectional: read both ways (states are ``2 * hidden_size`` wide).
        layers: stacked recurrent layers.
        attention: a registered mechanism name, or ``"none"`` to classify from the final states.
        attention_options: keyword options of the mechanism.
        query: what asks the attention: a ``learned`` vector, the ``last`` states, or the
            masked ``mean`` of the states.
        dropout: dropout on the pooled vector (and between stacked layers).
        embed_dropout: dropout on word vectors.
        word_dropout: in training, replace this fraction of tokens by ``unk_index``.
        unk_index: the OOV index used by word dropout (``None`` disables word dropout).
        subword_buckets: add hashed character n-gram vectors to word vectors (0 = off).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        embed_dim: int = 128,
        hidden_size: int = 100,
        cell: Literal["lstm", "gru"] = "lstm",
        bidirectional: bool = True,
        layers: int = 1,
        attention: str = "additive",
        attention_options: dict[str, Any] | None = None,
        query: QueryKind = "learned",
        dropout: float = 0.5,
        embed_dropout: float = 0.3,
        word_dropout: float = 0.0,
        unk_index: int | None = None,
        subword_buckets: int = 0,
    ) -> None:
        super().__init__()
        self.embedding = WordEmbedding(vocab_size, embed_dim, subword_buckets)
        self.embed_dropout = nn.Dropout(embed_dropout)
        self.word_dropout = word_dropout if unk_index is not None else 0.0
        self.unk_index = unk_index
        rnn_class = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_class(
            embed_dim,
            hidden_size,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        width = hidden_size * (2 if bidirectional else 1)
        add_pooling_head(
            self,
            width,
            num_classes,
            attention=attention,
            attention_options=attention_options,
            query=query,
            dropout=dropout,
        )

    def encode(self, ids: Tensor, lengths: Tensor, subwords: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``ids [B, T]``, ``lengths [B]`` (``subwords [B, T, K]``) -> ``(states [B, T, W], last [B, W],
        mask [B, T])``.

        An empty sequence (length 0) gets zero states and an all-False mask.
        """
        if self.training and self.word_dropout > 0 and self.unk_index is not None:
            drop = torch.rand(ids.shape, device=ids.device) < self.word_dropout
            ids = ids.masked_fill(drop & (ids > 0), self.unk_index)
        embedded = self.embed_dropout(self.embedding(ids, subwords))
        total = ids.shape[1]
        packed = pack_padded_sequence(embedded, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        output, hidden = self.rnn(packed)
        states, _ = pad_packed_sequence(output, batch_first=True, total_length=total)
        h_n = hidden[0] if isinstance(hidden, tuple) else hidden
        last = torch.cat([h_n[-2], h_n[-1]], dim=-1) if self.rnn.bidirectional else h_n[-1]
        mask = lengths_to_mask(lengths, total)
        empty = (lengths == 0).unsqueeze(-1)
        return states.masked_fill(~mask.unsqueeze(-1), 0.0), last.masked_fill(empty, 0.0), mask

    def make_query(self, states: Tensor, last: Tensor, mask: Tensor) -> Tensor:
        """The ``[B, W]`` query the attention scores the states against."""
        if self.query_kind == "learned":
            return self.query.expand(states.shape[0], -1)
        if self.query_kind == "last":
            return last
        counts = mask.sum(1, keepdim=True).clamp(min=1)
        return states.sum(1) / counts

    def forward(self, ids: Tensor, lengths: Tensor, subwords: Tensor | None = None) -> ClassifierOutput:
        states, last, mask = self.encode(ids, lengths, subwords)
        if self.attention_name == "none":
            return ClassifierOutput(self.classifier(self.dropout(last)), None)
        context, weights = self.attention(self.make_query(states, last, mask), states, mask=mask)
        if weights is not None and weights.dim() == 3:  # several heads or query steps: average them
            weights = weights.mean(1)
        return ClassifierOutput(self.classifier(self.dropout(context)), weights)
