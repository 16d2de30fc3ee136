"""A task run end to end on a tiny budget, checking each promise of :class:`vlattn.task.Task`.

>>> from vlattn.testing import check_task
>>> check_task("find-marker", {"train_size": 64, "val_size": 32})      # doctest: +SKIP

The steps are those ``vlattn train`` and ``vlattn eval`` take: ``setup_data``, ``collate``,
``build_model``, ``training_step`` on one batch (a finite scalar loss with a gradient), a short run
of the common trainer (``max_steps`` optimizer steps, validation, checkpoints), loading the saved
model file into a fresh task (``artifacts`` / ``load_artifacts``) and evaluating it again: the
metrics must equal the trainer's last validation.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlattn.task import DataSplits, Task, task_class_problems
from vlattn.testing.mechanism import ContractViolation

CHECK_PLUGIN = "vlattn.testing"


@dataclass
class TaskReport:
    """What :func:`check_task` measured: the trainer's last validation metrics and the same metrics
    from the model loaded back from its file."""

    task: str
    steps: int
    run_dir: Path
    metrics: dict[str, float]
    loaded_metrics: dict[str, float]


def resolve_task(task: str | type[Task]) -> tuple[str, type[Task]]:
    """``(name, class)`` for a registered task name or a :class:`Task` subclass."""
    if isinstance(task, str):
        from vlattn.plugins import task_registry

        return task, task_registry().get(task).load()
    return getattr(task, "name", None) or f"check-{task.__name__.lower()}", task


@contextlib.contextmanager
def registered(name: str, task_cls: type[Task]) -> Iterator[None]:
    """Make ``task_cls`` visible as ``name`` to the trainer for the duration (if it is not already)."""
    from vlattn.plugins import task_registry
    from vlattn.registry import TaskSpec

    registry = task_registry()
    if name in registry:
        yield
        return
    registry.add(TaskSpec(name, task_cls, summary="checked by vlattn.testing"), CHECK_PLUGIN)
    try:
        yield
    finally:
        registry.discard_plugin(CHECK_PLUGIN)


def _fail(name: str, message: str) -> ContractViolation:
    return ContractViolation(f"task {name!r}: {message}")


def check_first_batch(name: str, task: Task, splits: DataSplits, batch_size: int) -> None:
    """``collate`` and ``training_step`` on the first ``batch_size`` training items."""
    items = [splits.train[i] for i in range(min(batch_size, len(splits.train)))]  # type: ignore[arg-type]
    batch = task.collate(items)
    model = task.build_model()
    if not isinstance(model, torch.nn.Module):
        raise _fail(name, f"build_model returned {type(model).__name__}, not a torch.nn.Module")
    model.train()
    result = task.training_step(model, batch)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise _fail(name, "training_step must return (loss, logs)")
    loss, logs = result
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise _fail(name, f"training_step's loss must be a scalar tensor, got {getattr(loss, 'shape', type(loss))}")
    if not loss.requires_grad:
        raise _fail(name, "training_step's loss has no gradient (was it computed under no_grad or detached?)")
    if not torch.isfinite(loss.detach()).all():
        raise _fail(name, f"training_step's loss is {float(loss)}")
    if not isinstance(logs, Mapping) or not all(isinstance(k, str) for k in logs):
        raise _fail(name, "training_step's logs must be a mapping of names to numbers or tensors")
    loss.backward()


def check_task(
    task: str | type[Task],
    config: Mapping[str, Any] | None = None,
    *,
    steps: int = 3,
    batch_size: int = 4,
    deterministic_eval: bool = True,
    workdir: str | Path | None = None,
) -> TaskReport:
    """Run the task contract on ``task`` (a registered name or a :class:`Task` subclass).

    Args:
        task: the task to check.
        config: values of the task's ``Config`` fields (keep the data tiny).
        steps: optimizer steps the trainer takes.
        batch_size: the training batch size.
        deterministic_eval: require the loaded model's metrics to equal the trainer's (turn off for
            tasks whose evaluation samples, with a seed the task does not control).
        workdir: where the run folder goes (a temporary folder by default, removed afterwards).

    Raises :class:`ContractViolation` naming the first broken promise.
    """
    from vlattn.checkpoint import load_model
    from vlattn.config import from_mapping
    from vlattn.train import fit
    from vlattn.train.data import make_loader
    from vlattn.train.evaluation import run_evaluation

    name, task_cls = resolve_task(task)
    problems = task_class_problems(task_cls)
    if problems:
        raise _fail(name, "; ".join(problems))
    cfg = from_mapping(task_cls.Config, dict(config or {}), where=f"{name} options")
    probe = task_cls(cfg)
    torch.manual_seed(0)
    splits = probe.setup_data()
    if not isinstance(splits, DataSplits):
        raise _fail(name, f"setup_data must return vlattn.task.DataSplits, got {type(splits).__name__}")
    if len(splits.train) == 0:  # type: ignore[arg-type]
        raise _fail(name, "setup_data gave an empty training set")
    json.dumps(probe.artifacts())
    check_first_batch(name, probe, splits, batch_size)

    with contextlib.ExitStack() as stack:
        root = Path(workdir) if workdir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        run_dir = root / f"{name}-contract"
        trainer = {"max_steps": steps, "batch_size": batch_size, "eval_every": steps, "quiet": True, "device": "cpu"}
        with registered(name, task_cls):
            result = fit(name, cfg, trainer, run_dir)
            loaded = load_model(result.best_path or result.last_path, expect_task=name)
        eval_set = splits.val if splits.val is not None and len(splits.val) > 0 else splits.train  # type: ignore[arg-type]
        loader = make_loader(eval_set, batch_size=2 * batch_size, collate=loaded.task.collate)
        torch.manual_seed(0)
        options = loaded.task.validation_options()
        if not isinstance(options, task_cls.EvalOptions):
            raise _fail(name, f"validation_options() must return a {task_cls.EvalOptions.__name__}, got {options!r}")
        loaded_metrics = run_evaluation(loaded.task, loaded.model, loader, torch.device("cpu"), options=options)
        report = TaskReport(name, result.step, run_dir, dict(result.metrics), loaded_metrics)
    if result.step != steps:
        raise _fail(name, f"the trainer stopped at step {result.step} of {steps} ({result.reason})")
    if not loaded_metrics or not all(math.isfinite(v) for v in loaded_metrics.values()):
        raise _fail(name, f"evaluate must return finite metrics, got {loaded_metrics}")
    metric = task_cls.best_metric[0]
    if splits.val is not None and metric not in loaded_metrics:
        raise _fail(name, f"best_metric {metric!r} is not among evaluate's metrics ({', '.join(loaded_metrics)})")
    if deterministic_eval and report.metrics:
        differ = {
            k: (v, loaded_metrics.get(k)) for k, v in report.metrics.items() if not _same(v, loaded_metrics.get(k))
        }
        if differ:
            raise _fail(name, f"the model loaded from its file scores differently from the trained one: {differ}")
    return report


def _same(a: float, b: float | None) -> bool:
    return b is not None and math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
