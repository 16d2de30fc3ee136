"""Entry point of the built-in text plugin: the ``text-classifier`` task and ``vlattn classify``.

Imports no torch: the task is named by a dotted string and the command imports torch only
when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vlattn.hookspecs import hookimpl
from vlattn.registry import TaskSpec

if TYPE_CHECKING:
    import click


@hookimpl
def register_tasks(register: Callable[[TaskSpec], None]) -> None:
    """Register the sentence classification task."""
    register(
        TaskSpec(
            "text-classifier",
            "vlattn_text.task:TextClassifierTask",
            summary="sentence classification: the tutorial's Keras models, (Bi)LSTM/GRU + any attention, Transformer",
        )
    )


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add ``vlattn classify``."""
    from vlattn_text.cli import classify

    cli.add_command(classify)


@hookimpl
def register_views(register: Callable[..., None]) -> None:
    """Add the text page to ``vlattn serve``."""
    from vlattn_text.view import VIEW

    register(VIEW)
