"""Entry point of the built-in caption plugin: the ``caption`` task and the ``vlattn caption`` command.

Imports no torch: the task is registered by a dotted factory string and the commands import
their heavy parts when they run.
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
    """Register the Show-Attend-Tell captioning task."""
    register(
        TaskSpec(
            "caption",
            "vlattn_caption.task:CaptionTask",
            summary="Show, Attend and Tell image captioning (soft / hard attention)",
        )
    )


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add ``vlattn caption`` and ``vlattn caption-data``."""
    from vlattn_caption.commands import caption, caption_data

    cli.add_command(caption)
    cli.add_command(caption_data)


@hookimpl
def register_views(register: Callable[..., None]) -> None:
    """Add the caption page to ``vlattn serve``."""
    from vlattn_caption.view import VIEW

    register(VIEW)
