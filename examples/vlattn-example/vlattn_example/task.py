"""A toy task showing everything a vlattn task provides, in about a hundred lines."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from vlattn.attention import build_attention
from vlattn.config import option
from vlattn.task import DataSplits, Task

PAD, MARKER = 0, 1


@dataclass
class FindMarkerConfig:
    """Options of ``vlattn train find-marker`` (each field becomes a command-line option)."""

    vocab_size: int = option(20, help="number of token ids (0 = padding, 1 = the marker)")
    max_len: int = option(16, help="longest sequence")
    train_size: int = option(512, help="training sequences to generate")
    val_size: int = option(128, help="validation sequences to generate")
    dim: int = option(16, help="embedding size")
    attention: str = option("cosine", help="attention mechanism by name (any registered one)")
    data_seed: int = option(1234, help="seed of the generated data")

    def validate(self) -> None:
        if self.vocab_size < 3 or self.max_len < 2:
            raise ValueError("vocab_size must be >= 3 and max_len >= 2")


def make_sequences(n: int, cfg: FindMarkerConfig, generator: torch.Generator) -> TensorDataset:
    """``n`` padded sequences ``[n, max_len]``, their lengths ``[n]`` and labels ``[n]``."""
    lengths = torch.randint(2, cfg.max_len + 1, (n,), generator=generator)
    tokens = torch.randint(2, cfg.vocab_size, (n, cfg.max_len), generator=generator)
    labels = torch.randint(0, 2, (n,), generator=generator)
    where = (torch.rand(n, generator=generator) * lengths).long()
    tokens[labels.bool(), where[labels.bool()]] = MARKER
    tokens[torch.arange(cfg.max_len)[None, :] >= lengths[:, None]] = PAD
    return TensorDataset(tokens, lengths, labels)


class MarkerModel(nn.Module):
    """Embedding -> attention pooling with a learned query -> linear. ``tokens [B, S]`` -> logits ``[B, 2]``."""

    def __init__(self, cfg: FindMarkerConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=PAD)
        self.query = nn.Parameter(torch.randn(cfg.dim) / cfg.dim**0.5)
        self.attention = build_attention(cfg.attention, cfg.dim, cfg.dim)
        self.out = nn.Linear(cfg.dim, 2)

    def forward(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        keys = self.embed(tokens)  # [B, S, D]
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
        context, weights = self.attention(self.query.expand(tokens.shape[0], -1), keys, mask=mask)
        return self.out(context), weights


class FindMarkerTask(Task):
    """Find the marker token: a sequence's label is 1 when token 1 occurs in it."""

    Config = FindMarkerConfig
    trainer_defaults: Mapping[str, object] = {"epochs": 5, "batch_size": 32, "lr": 0.01}
    best_metric = ("accuracy", "max")

    def setup_data(self) -> DataSplits:
        g = torch.Generator().manual_seed(self.config.data_seed)
        return DataSplits(
            make_sequences(self.config.train_size, self.config, g), make_sequences(self.config.val_size, self.config, g)
        )

    def build_model(self) -> nn.Module:
        return MarkerModel(self.config)

    def training_step(self, model: nn.Module, batch: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        tokens, lengths, labels = batch
        logits, _ = model(tokens, lengths)
        loss = nn.functional.cross_entropy(logits, labels)
        return loss, {"accuracy": (logits.argmax(-1) == labels).float().mean()}

    def evaluate(self, model: nn.Module, batches: Iterable[list[Tensor]], options: object = None) -> dict[str, float]:
        correct = total = 0
        loss_sum = 0.0
        for tokens, lengths, labels in batches:
            logits, _ = model(tokens, lengths)
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(-1) == labels).sum())
            total += len(labels)
        return {"loss": loss_sum / total, "accuracy": correct / total}
