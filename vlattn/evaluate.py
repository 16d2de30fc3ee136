"""Scoring a saved model on a dataset (what ``vlattn eval`` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlattn.errors import VlattnError


def evaluate_file(
    path: str | Path,
    *,
    data: str | None = None,
    options: Any = None,
    device: str = "auto",
    batch_size: int = 64,
) -> dict[str, float]:
    """Load the model in ``path`` and return its task's metrics on ``data`` (or the default split)."""
    from vlattn.checkpoint import load_model
    from vlattn.train.data import make_loader
    from vlattn.train.distributed import resolve_device
    from vlattn.train.evaluation import run_evaluation

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
