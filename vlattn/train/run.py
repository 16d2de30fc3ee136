"""Setting up a run folder: resolve the task and configs, write ``config.json``, build the trainer."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlattn import __version__
from vlattn.config import ConfigError, from_mapping, to_dict
from vlattn.errors import VlattnError
from vlattn.fileio import atomic_write_text
from vlattn.train.logging import CSV, JSONL, TENSORBOARD_DIR
from vlattn.train.trainer_config import TrainerConfig

CONFIG_FILE = "config.json"
# what a run folder holds before its first checkpoint: such a folder can be started again
PRE_CHECKPOINT_FILES = frozenset({CONFIG_FILE, JSONL, CSV, TENSORBOARD_DIR})


@dataclass
class PreparedRun:
    """A run folder ready to train."""

    run_dir: Path
    config: dict[str, Any]
    trainer: Any  # vlattn.train.loop.Trainer
    resume: bool = False  # False also for a --resume of a run that never reached a checkpoint


def _as_mapping(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_dict(obj)
    return dict(obj)


def resolve_trainer(task_cls: type, trainer: TrainerConfig | Mapping[str, Any] | None) -> TrainerConfig:
    """The task's trainer defaults overlaid with ``trainer`` (a config or a partial mapping)."""
    if isinstance(trainer, TrainerConfig):
        return trainer
    values = {**dict(getattr(task_cls, "trainer_defaults", {})), **_as_mapping(trainer)}
    return from_mapping(TrainerConfig, values, where="trainer options")


def default_run_dir(task_name: str) -> Path:
    """``runs/TASK-YYYYmmdd-HHMMSS`` under the current directory."""
    return Path("runs") / f"{task_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def has_checkpoint(run_dir: Path) -> bool:
    """True when ``run_dir`` holds anything beyond what a run writes before its first checkpoint."""
    return any(entry.name not in PRE_CHECKPOINT_FILES for entry in run_dir.iterdir())


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The saved ``config.json`` of ``run_dir``, or a one-line :class:`VlattnError` saying why not."""
    if not run_dir.exists():
        raise VlattnError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise VlattnError(f"{run_dir} is a file, not a run folder")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise VlattnError(f"{run_dir} is not a run folder (no {CONFIG_FILE})")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VlattnError(f"{path} is corrupt ({exc}); the run cannot be resumed from it") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("task"), str):
        raise VlattnError(f"{path} is not a vlattn run configuration (no task name)")
    for key in ("task_config", "trainer"):
        if not isinstance(saved.get(key, {}), dict):
            raise VlattnError(f"{path} is corrupt: {key!r} is not a table of options")
    return saved


def load_task_class(task_name: str) -> type:
    """The registered task class, checked to be usable before any file is written."""
    from vlattn.errors import PluginContractError
    from vlattn.plugins import task_registry
    from vlattn.task import task_class_problems

    spec = task_registry().get(task_name)
    task_cls = spec.load()
    problems = task_class_problems(task_cls)
    if problems:
        raise PluginContractError(f"task {task_name!r} of plugin {spec.plugin!r}: {'; '.join(problems)}")
    return task_cls


def prepare_run(
    task_name: str | None,
    task_config: Any,
    trainer: TrainerConfig | Mapping[str, Any] | None,
    out: str | Path | None,
    *,
    resume: bool = False,
) -> PreparedRun:
    """Check the options, create (or reopen) the run folder and build the :class:`Trainer`."""
    from vlattn.plugins import get_host
    from vlattn.train.distributed import from_environment
    from vlattn.train.loop import Trainer

    is_main = from_environment().is_main
    if resume:
        if out is None:
            raise VlattnError("--resume needs the run folder to continue")
        run_dir = Path(out)
        saved = read_run_config(run_dir)
        if task_name is not None and task_name != saved["task"]:
            raise VlattnError(f"{run_dir} is a {saved['task']!r} run, not {task_name!r}")
        if task_config:
            raise VlattnError("task options cannot change on --resume; only trainer options can")
        task_name = saved["task"]
        task_cls = load_task_class(task_name)
        where = str(run_dir / CONFIG_FILE)
        task_cfg = from_mapping(task_cls.Config, saved.get("task_config", {}), where=where)
        trainer_cfg = from_mapping(
            TrainerConfig, {**saved.get("trainer", {}), **_as_mapping(trainer)}, where="trainer options"
        )
        # a run stopped before its first checkpoint starts again from step 0 with its saved options
        resume = has_checkpoint(run_dir)
    else:
        if task_name is None:
            raise VlattnError("name the task to train")
        task_cls = load_task_class(task_name)
        task_cfg = (
            task_config
            if isinstance(task_config, task_cls.Config)
            else from_mapping(task_cls.Config, _as_mapping(task_config), where=f"{task_name} options")
        )
        trainer_cfg = resolve_trainer(task_cls, trainer)
        run_dir = Path(out) if out is not None else default_run_dir(task_name)
        if run_dir.exists() and not run_dir.is_dir():
            raise VlattnError(f"run folder {run_dir} is a file; choose another --out")
        if run_dir.is_dir() and has_checkpoint(run_dir) and is_main:
            raise VlattnError(
                f"run folder {run_dir} already exists and holds more than an unstarted run; choose another --out "
                f"or continue it with --resume {run_dir}"
            )
    try:
        task = task_cls(task_cfg)
    except (ValueError, ConfigError) as exc:
        raise VlattnError(f"{task_name}: {exc}") from None
    config = {
        "task": task_name,
        "task_config": to_dict(task_cfg),
        "trainer": to_dict(trainer_cfg),
        "vlattn_version": __version__,
    }
    if is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        except OSError as exc:
            raise VlattnError(f"cannot write the run folder {run_dir}: {exc.strerror or exc}") from None
    trainer_obj = Trainer(task, task_name, trainer_cfg, run_dir, hooks=get_host(), run_config=config)
    return PreparedRun(run_dir, config, trainer_obj, resume)
