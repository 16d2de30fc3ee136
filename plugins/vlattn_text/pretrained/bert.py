"""A BERT encoder (Devlin et al. 2019) made of vlattn's Transformer layers.

BERT's layer is the post-norm Transformer layer with GELU: ``x = LN(x + MHA(x))``,
``x = LN(x + W2 gelu(W1 x))``; vlattn's :class:`TransformerEncoderLayer` with
``activation="gelu"`` and BERT's LayerNorm epsilon is exactly that, and its multi-head attention
packs the query, key and value projections into one matrix product (as PyTorch's does).
:func:`convert_state_dict` maps a Hugging Face ``BertModel`` checkpoint's names onto this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from vlattn.attention.transformer import TransformerEncoder
from vlattn.errors import VlattnError


@dataclass(frozen=True)
class BertConfig:
    """The architecture fields of a BERT ``config.json`` (other fields are ignored)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "config.json") -> BertConfig:
        """Read the fields this encoder needs; refuse architectures it cannot reproduce."""
        model_type = values.get("model_type", "bert")
        if model_type != "bert":
            raise VlattnError(f"{where}: model_type {model_type!r} is not a BERT architecture")
        if values.get("position_embedding_type", "absolute") != "absolute":
            raise VlattnError(f"{where}: only absolute position embeddings are supported")
        if values.get("hidden_act", "gelu") != "gelu":
            raise VlattnError(f"{where}: hidden_act {values.get('hidden_act')!r} is not supported (gelu only)")
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in values.items() if k in known})
        if config.hidden_size % config.num_attention_heads:
            raise VlattnError(f"{where}: hidden_size is not divisible by num_attention_heads")
        return config

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout: ``ids [B, T]`` -> ``[B, T, H]``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, ids: Tensor) -> Tensor:
        steps = ids.shape[1]
        if steps > self.position.num_embeddings:
            raise VlattnError(f"a text of {steps} word pieces exceeds the encoder's {self.position.num_embeddings}")
        positions = self.position.weight[:steps]  # [T, H]
        x = self.word(ids) + positions + self.token_type.weight[0]  # one segment: type 0 everywhere
        return self.dropout(self.norm(x))


class BertEncoder(nn.Module):
    """BERT: ``ids [B, T]`` and ``mask [B, T]`` (True = real token) -> hidden states ``[B, T, H]``.

    :meth:`forward` can also return the last layer's self-attention, averaged over heads
    (``[B, T, T]``), for display.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = TransformerEncoder(
            config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            ff_dim=config.intermediate_size,
            dropout=config.hidden_dropout_prob,
            activation="gelu",
            layer_norm_eps=config.layer_norm_eps,
        )
        for layer in self.encoder.layers:
            layer.self_attn.dropout = config.attention_probs_dropout_prob  # BERT's rate on the probabilities
            layer.dropout = nn.Identity()  # BERT has no dropout inside the feed-forward block

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layers

    def forward(self, ids: Tensor, mask: Tensor, *, last_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """``(hidden [B, T, H], last-layer attention [B, T, T] or None)``."""
        x = self.embeddings(ids)
        last = self.layers[-1]
        last.need_weights = last_attention
        try:
            for layer in self.layers:
                x = layer(x, mask)
        finally:
            last.need_weights = False
        return x, last.attention_weights if last_attention else None


HF_LAYER_NAMES = {
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "linear1",
    "output.dense": "linear2",
    "output.LayerNorm": "norm2",
}
HF_EMBEDDING_NAMES = {
    "word_embeddings": "word",
    "position_embeddings": "position",
    "token_type_embeddings": "token_type",
    "LayerNorm": "norm",
}


def convert_state_dict(state: Mapping[str, Tensor], config: BertConfig) -> dict[str, Tensor]:
    """A Hugging Face ``BertModel`` state dict (optionally under a ``bert.`` prefix, with ``gamma`` /
    ``beta`` LayerNorm names) -> this module's names. Pooler and task heads are dropped."""
    state = {_modern(k.removeprefix("bert.")): v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        if name.startswith("embeddings.") and not name.endswith("position_ids"):
            part, _, leaf = name.removeprefix("embeddings.").rpartition(".")
            if part in HF_EMBEDDING_NAMES:
                out[f"embeddings.{HF_EMBEDDING_NAMES[part]}.{leaf}"] = value
    for i in range(config.num_hidden_layers):
        prefix, ours = f"encoder.layer.{i}.", f"encoder.layers.{i}."
        try:
            for leaf in ("weight", "bias"):
                out[f"{ours}self_attn.in_proj_{leaf}"] = torch.cat(
                    [state[f"{prefix}attention.self.{p}.{leaf}"] for p in ("query", "key", "value")]
                )
                for theirs, mine in HF_LAYER_NAMES.items():
                    out[f"{ours}{mine}.{leaf}"] = state[f"{prefix}{theirs}.{leaf}"]
        except KeyError as exc:
            raise VlattnError(f"the checkpoint has no {exc.args[0]!r}: not a BERT checkpoint of this size") from None
    return out


def _modern(name: str) -> str:
    return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
