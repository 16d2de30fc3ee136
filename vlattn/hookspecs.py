"""Every hook a vlattn plugin can implement.

A plugin is a module (named by an entry point in the ``vlattn`` group) holding functions
decorated with :data:`hookimpl` whose names match the specs below. Registration hooks receive a
``register`` callable; they should hand it *specs* whose factories are dotted strings
(``"package.module:Name"``) or callables that import heavy code lazily, so that listing what a
plugin offers never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from vlattn.registry import AttentionSpec, TaskSpec
    from vlattn.serve.spec import ViewSpec

PROJECT = "vlattn"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_attention(register: Callable[[AttentionSpec], None]) -> None:
    """Register attention mechanisms by calling ``register(AttentionSpec(...))`` once for each.

    A mechanism's factory is called as ``factory(query_dim, key_dim, **options)`` and must return a
    module following :class:`vlattn.attention.Attention`'s interface, so every model that takes a
    mechanism by name can use it.
    """


@hookspec
def register_tasks(register: Callable[[TaskSpec], None]) -> None:
    """Register trainable tasks by calling ``register(TaskSpec(...))`` once for each.

    A task's factory returns a :class:`vlattn.task.Task` subclass; it bundles the config dataclass,
    the datasets, the model builder, the loss and the evaluation that ``vlattn train`` and
    ``vlattn eval`` drive.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands to the ``vlattn`` command group (``cli.add_command(...)``).

    Keep module-level imports of the command light: ``vlattn --help`` builds every command.
    """


@hookspec
def register_views(register: Callable[[ViewSpec], None]) -> None:
    """Add pages to ``vlattn serve`` by calling ``register(ViewSpec(...))`` once for each.

    A view names its handler class, its page script and its API routes by dotted strings, so
    registering it imports neither torch nor the web server; see :mod:`vlattn.serve`.
    """


@hookspec
def on_train_start(run_dir: Path, config: Mapping[str, Any]) -> None:
    """Called on the main process once a training run is set up, before the first step.

    ``config`` is the run's resolved configuration as saved in ``run_dir/config.json``.
    """


@hookspec
def on_metrics(run_dir: Path, step: int, metrics: Mapping[str, float]) -> None:
    """Called on the main process every time the trainer logs a row of metrics.

    Use it to forward metrics to an experiment tracker. ``step`` counts optimizer updates.
    """


@hookspec
def on_checkpoint(run_dir: Path, step: int, path: Path, is_best: bool) -> None:
    """Called on the main process after a model checkpoint was written atomically to ``path``."""


@hookspec
def on_train_end(run_dir: Path, step: int, reason: str) -> None:
    """Called on the main process when training stops.

    ``reason`` is one of ``"finished"``, ``"early_stop"``, ``"interrupted"``, ``"diverged"`` (NaN or
    infinite loss) or ``"failed"`` (an exception, which the trainer re-raises after this hook).
    """
