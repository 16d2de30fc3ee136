"""Optimizers and learning-rate schedules named by :class:`~vlattn.train.config.TrainerConfig`."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from vlattn.train.config import TrainerConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainerConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` over the trainable ``params``."""
    trainable = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainerConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A step-wise schedule: linear warm-up then ``cfg.schedule`` down to 0 at ``total_steps``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, warmup=cfg.warmup_steps, total=total_steps, schedule=cfg.schedule),
    )
