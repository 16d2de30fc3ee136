"""Evaluation, shared by the trainer's validation and ``vlattn eval`` (:func:`evaluate_file`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from vlattn.errors import VlattnError
from vlattn.task import Task
from vlattn.train.data import make_loader, to_device


def run_evaluation(
    task: Task,
    model: torch.nn.Module,
    loader: Any,
    device: torch.device,
    *,
    options: Any,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> dict[str, float]:
    """``task.evaluate`` over ``loader`` with the model in eval mode under ``no_grad``.

    ``options`` is an instance of the task's ``EvalOptions`` (``task.validation_options()`` during
    training).
    """
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


def evaluate_file(
    path: str | Path,
    *,
    data: str | None = None,
    options: Any = None,
    device: str = "auto",
    batch_size: int = 64,
) -> dict[str, float]:
    """Load the model in ``path`` and return its task's metrics on ``data`` (or the default split).

    ``options`` is the task's ``EvalOptions`` (default: ``EvalOptions()``). What ``vlattn eval`` runs.
    """
    from vlattn.checkpoint import load_model
    from vlattn.train.distributed import resolve_device

    torch_device = resolve_device(device)
    loaded = load_model(path, device=torch_device)
    task = loaded.task
    if options is None:
        options = task.EvalOptions()
    try:
        dataset = task.eval_data(data, options)
    except NotImplementedError as exc:
        raise VlattnError(str(exc)) from None
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise VlattnError("the evaluation data is empty")
    loader = make_loader(dataset, batch_size=batch_size, collate=task.collate)
    return run_evaluation(task, loaded.model, loader, torch_device, options=options)
