"""Model files: ONE ``.safetensors`` file holding the weights and the metadata to rebuild the model.

Metadata keys (strings, as safetensors requires):

* ``vlattn.format``: ``"1"``
* ``vlattn.task``: the task name, looked up in the plugin registry on load
* ``vlattn.config``: the task config as JSON
* ``vlattn.artifacts``: the task's artifacts as JSON (vocabulary ...)
* ``vlattn.version``: the vlattn version that wrote the file
* ``vlattn.info``: free JSON (metrics, training step ...)

Loading never unpickles anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlattn import __version__
from vlattn.errors import ModelFileError
from vlattn.fileio import atomic_write

if TYPE_CHECKING:
    import torch

    from vlattn.task import Task

FORMAT = "1"


def model_file(path: str | Path) -> Path:
    """The model file that ``path`` names: the file itself, or a run folder's ``best.safetensors``
    (else its ``last.safetensors``). Raises :class:`ModelFileError` for a folder holding neither."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = next((p for p in (path / "best.safetensors", path / "last.safetensors") if p.is_file()), None)
    if found is None:
        raise ModelFileError(f"{path} holds no best.safetensors or last.safetensors")
    return found


def save_model(
    path: str | Path,
    model: torch.nn.Module,
    *,
    task_name: str,
    config: Mapping[str, Any],
    artifacts: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and metadata to ``path`` atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()}
    metadata = {
        "vlattn.format": FORMAT,
        "vlattn.task": task_name,
        "vlattn.config": json.dumps(dict(config)),
        "vlattn.artifacts": json.dumps(dict(artifacts or {})),
        "vlattn.version": __version__,
        "vlattn.info": json.dumps(dict(info or {})),
    }
    return atomic_write(path, lambda p: save_file(state, str(p), metadata=metadata))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP or ``torch.compile`` wrapper."""
    inner = getattr(model, "module", None)
    if inner is not None and type(model).__name__ == "DistributedDataParallel":
        return unwrap(inner)
    return getattr(model, "_orig_mod", model)


@dataclass
class ModelHeader:
    """The metadata of a model file, read without loading its weights."""

    path: Path
    task: str
    config: dict[str, Any]
    artifacts: dict[str, Any]
    version: str
    info: dict[str, Any]


def read_header(path: str | Path) -> ModelHeader:
    """Read a model file's metadata; raise :class:`ModelFileError` with a clear message if it is bad."""
    p = Path(path)
    if p.is_dir():
        raise ModelFileError(f"{p} is a directory, not a model file")
    if not p.exists():
        raise ModelFileError(f"model file not found: {p}")
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ModelFileError(f"{p} is not a readable .safetensors model file ({exc})") from None
    if meta.get("vlattn.format") != FORMAT or "vlattn.task" not in meta:
        raise ModelFileError(f"{p} is a safetensors file but not a vlattn model (no vlattn metadata)")
    try:
        return ModelHeader(
            path=p,
            task=meta["vlattn.task"],
            config=json.loads(meta.get("vlattn.config", "{}")),
            artifacts=json.loads(meta.get("vlattn.artifacts", "{}")),
            version=meta.get("vlattn.version", "?"),
            info=json.loads(meta.get("vlattn.info", "{}")),
        )
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{p} has corrupt vlattn metadata ({exc})") from None


@dataclass
class LoadedModel:
    """A model rebuilt from a file, with the task object that knows how to use it."""

    task: Task
    model: torch.nn.Module
    header: ModelHeader


def load_model(path: str | Path, *, device: str | torch.device = "cpu", expect_task: str | None = None) -> LoadedModel:
    """Rebuild the task and model stored in ``path`` (weights on ``device``, eval mode).

    Raises :class:`ModelFileError` for a missing, corrupt or foreign file, and
    :class:`vlattn.errors.UnknownNameError` if no installed plugin provides the file's task.
    """
    from safetensors.torch import load_file

    from vlattn.config import from_mapping
    from vlattn.plugins import task_registry

    header = read_header(path)
    if expect_task is not None and header.task != expect_task:
        raise ModelFileError(f"{header.path} is a {header.task!r} model, expected a {expect_task!r} model")
    task_cls = task_registry().get(header.task).load()
    task = task_cls(from_mapping(task_cls.Config, header.config, where=str(header.path)))
    task.load_artifacts(header.artifacts)
    model = task.build_model()
    try:
        state = load_file(str(header.path), device=str(device))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{header.path}: weights do not match the {header.task!r} model ({first})") from None
    model.to(device).eval()
    return LoadedModel(task=task, model=model, header=header)
