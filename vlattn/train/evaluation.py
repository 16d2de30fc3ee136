"""Evaluation shared by the trainer's validation and ``vlattn eval``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from vlattn.task import Task
from vlattn.train.data import to_device


def run_evaluation(
    task: Task,
    model: torch.nn.Module,
    loader: Any,
    device: torch.device,
    *,
    options: Any = None,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> dict[str, float]:
    """``task.evaluate`` over ``loader`` with the model in eval mode under ``no_grad``."""
    was_training = model.training
    model.eval()

    def batches() -> Iterator[Any]:
        for batch in loader:
            yield to_device(batch, device)

    try:
        with torch.no_grad(), autocast():
            metrics = task.evaluate(model, batches(), options)
    finally:
        model.train(was_training)
    return {k: float(v) for k, v in metrics.items()}
