"""Setting up a run folder: resolve the task and configs, write ``config.json``, build the trainer."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlattn import __version__
from vlattn.config import ConfigError, from_mapping, to_dict
from vlattn.errors import VlattnError
from vlattn.fileio import atomic_write_text
from vlattn.train.config import TrainerConfig

CONFIG_FILE = "config.json"


@dataclass
class PreparedRun:
    """A run folder ready to train."""

    run_dir: Path
    config: dict[str, Any]
    trainer: Any  # vlattn.train.loop.Trainer


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


def prepare_run(
    task_name: str | None,
    task_config: Any,
    trainer: TrainerConfig | Mapping[str, Any] | None,
    out: str | Path | None,
    *,
    resume: bool = False,
) -> PreparedRun:
    """Check the options, create (or reopen) the run folder and build the :class:`Trainer`."""
    from vlattn.plugins import get_host, task_registry
    from vlattn.train.loop import Trainer

    is_main = int(os.environ.get("RANK", "0")) == 0
    if resume:
        if out is None:
            raise VlattnError("--resume needs the run folder to continue")
        run_dir = Path(out)
        config_path = run_dir / CONFIG_FILE
        if not config_path.is_file():
            raise VlattnError(f"{run_dir} is not a run folder (no {CONFIG_FILE})")
        saved = json.loads(config_path.read_text(encoding="utf-8"))
        if task_name is not None and task_name != saved["task"]:
            raise VlattnError(f"{run_dir} is a {saved['task']!r} run, not {task_name!r}")
        if task_config:
            raise VlattnError("task options cannot change on --resume; only trainer options can")
        task_name = saved["task"]
        task_cls = task_registry().get(task_name).load()
        task_cfg = from_mapping(task_cls.Config, saved["task_config"], where=str(config_path))
        trainer_cfg = from_mapping(TrainerConfig, {**saved["trainer"], **_as_mapping(trainer)}, where="trainer options")
    else:
        if task_name is None:
            raise VlattnError("name the task to train")
        task_cls = task_registry().get(task_name).load()
        task_cfg = (
            task_config
            if isinstance(task_config, task_cls.Config)
            else from_mapping(task_cls.Config, _as_mapping(task_config), where=f"{task_name} options")
        )
        trainer_cfg = resolve_trainer(task_cls, trainer)
        run_dir = Path(out) if out is not None else default_run_dir(task_name)
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())) and is_main:
            raise VlattnError(
                f"run folder {run_dir} already exists and is not empty; choose another --out "
                f"or continue it with --resume {run_dir}"
            )
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
    try:
        task = task_cls(task_cfg)
    except (ValueError, ConfigError) as exc:
        raise VlattnError(f"{task_name}: {exc}") from None
    trainer_obj = Trainer(task, task_name, trainer_cfg, run_dir, hooks=get_host())
    return PreparedRun(run_dir, config, trainer_obj)
