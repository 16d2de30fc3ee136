"""What a ``--model`` value names: a model file, a training run folder, or a plugin's bundled model.

Every plugin command that loads a model takes the same option (:func:`model_option`) and resolves
it the same way (:func:`resolve_model_file`):

* nothing: the plugin's default bundled model;
* an existing path: that model file, or a run folder's ``best.safetensors`` (else its
  ``last.safetensors``), as ``vlattn eval RUNFOLDER`` picks it (:func:`vlattn.checkpoint.model_file`);
* a bundled model's name (when no such path exists): that file from the plugin's ``weights`` folder.

The file found must hold a model of the command's task; a file of another task is refused in one
line before anything is loaded.

>>> BUNDLED = BundledModels(Path("weights"), {"sentiment": "BiGRU + attention"}, default="sentiment")
>>> resolve_model_file("runs/sst", task="text-classifier", bundled=BUNDLED)   # doctest: +SKIP
PosixPath('runs/sst/best.safetensors')

This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from vlattn.checkpoint import model_file, read_header
from vlattn.errors import BundledModelMissingError, ModelFileError

if TYPE_CHECKING:
    from vlattn.checkpoint import LoadedModel

MODEL_SUFFIX = ".safetensors"

Command = TypeVar("Command", bound=Callable[..., Any])


@dataclass(frozen=True)
class BundledModels:
    """The model files a plugin ships, each named by its file's stem in ``folder``.

    Attributes:
        folder: where the files lie (the plugin's ``weights`` folder).
        names: bundled model name -> one-line description (shown in ``--model``'s help).
        default: the name used when no model is given (``None``: a model must be given).
        remedy: how to make a missing file again, e.g. ``"train it with scripts/x.py"``.
    """

    folder: Path
    names: Mapping[str, str] = field(default_factory=dict)
    default: str | None = None
    remedy: str = ""

    def path(self, name: str) -> Path:
        """Where the bundled model ``name`` is installed (it may be missing)."""
        return self.folder / f"{name}{MODEL_SUFFIX}"

    def file(self, name: str, task: str) -> Path:
        """The installed file of the bundled model ``name``; raises
        :class:`~vlattn.errors.BundledModelMissingError` when it is missing."""
        path = self.path(name)
        if not path.is_file():
            raise BundledModelMissingError(bundled_missing_message(task, name, path, self.remedy))
        return path

    def help_text(self) -> str:
        """The bundled names for ``--help``: ``"a (the default), b (...)"``."""
        shown = []
        for name, summary in self.names.items():
            notes = [note for note in ("the default" if name == self.default else "", summary) if note]
            shown.append(f"{name} ({'; '.join(notes)})" if notes else name)
        return ", ".join(shown)


def bundled_missing_message(task: str, name: str, path: Path, remedy: str = "", option: str = "--model PATH") -> str:
    """The one form of every "bundled model missing" message; ``option`` is how the user passes
    another model (``vlattn serve`` says ``--model SLOT=PATH``)."""
    how = f"{remedy} or " if remedy else ""
    return f"the bundled {task} model {name!r} is missing ({path}); {how}pass {option}"


def resolve_model_file(model: str | Path | None, *, task: str, bundled: BundledModels | None = None) -> Path:
    """The model file of task ``task`` that ``model`` names (see the module docstring).

    Raises :class:`~vlattn.errors.ModelFileError` (one line) for a missing or unreadable file, a
    run folder without a model, a missing bundled model, or a model of another task.
    """
    path = _locate(model, task, bundled)
    found = read_header(path).task
    if found != task:
        raise ModelFileError(f"{path} is a {found!r} model, not a {task!r} model")
    return path


def _locate(model: str | Path | None, task: str, bundled: BundledModels | None) -> Path:
    if model is None:
        if bundled is None or bundled.default is None:
            raise ModelFileError(f"no {task} model given; pass --model PATH")
        return bundled.file(bundled.default, task)
    name = str(model)
    if bundled is not None and name in bundled.names and not Path(name).exists():
        return bundled.file(name, task)
    return model_file(model)


def load_task_model(
    model: str | Path | None, *, task: str, bundled: BundledModels | None = None, device: str = "cpu"
) -> LoadedModel:
    """Resolve ``model`` (:func:`resolve_model_file`) and load it on ``device``."""
    from vlattn.checkpoint import load_model

    return load_model(resolve_model_file(model, task=task, bundled=bundled), device=device, expect_task=task)


def model_option(what: str, bundled: BundledModels | None = None) -> Callable[[Command], Command]:
    """The ``--model/-m`` option of a plugin command; the value reaches the command as ``model``
    (``None`` when not given), to be passed to :func:`resolve_model_file`.

    Args:
        what: the kind of model in the help text, e.g. ``"caption"``.
        bundled: the plugin's bundled models, listed in the help text.
    """
    text = f"a {what} model file, or a training run folder (its best, else last, model)"
    if bundled is not None and bundled.names:
        text += f", or a bundled model: {bundled.help_text()}"
    return click.option("--model", "-m", "model", default=None, metavar="PATH", help=text)
