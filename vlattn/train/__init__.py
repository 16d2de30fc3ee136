"""The common trainer. ``fit`` trains any registered task into a run folder.

A run folder holds ``config.json`` (task name, task config, trainer config), ``metrics.jsonl`` and
``metrics.csv``, ``last.safetensors`` and ``best.safetensors`` (complete model files), and the
trainer state for an exact ``--resume``. Importing this package loads no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlattn.train.trainer_config import TrainerConfig

if TYPE_CHECKING:
    from vlattn.train.loop import RunResult


def fit(
    task_name: str | None = None,
    task_config: Mapping[str, Any] | Any = None,
    trainer: TrainerConfig | Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
) -> RunResult:
    """Train ``task_name`` with ``task_config`` into the run folder ``out``.

    Args:
        task_name: a registered task (ignored on resume: the run folder names it).
        task_config: the task's ``Config`` instance or a mapping of its fields.
        trainer: a :class:`TrainerConfig` or a mapping of its fields (the task's
            ``trainer_defaults`` fill what the mapping leaves out).
        out: the run folder; must be new, empty, or a run stopped before its first checkpoint
            (which starts again) unless ``resume``.
        resume: continue the run in ``out`` exactly where its last checkpoint left it; ``trainer``
            values given here override the saved ones (to extend ``max_steps``, say). A run that
            stopped before its first checkpoint starts again from step 0 with its saved options.
    """
    from vlattn.train.run import prepare_run

    run = prepare_run(task_name, task_config, trainer, out, resume=resume)
    return run.trainer.train(resume=run.resume)


__all__ = ["TrainerConfig", "fit"]
