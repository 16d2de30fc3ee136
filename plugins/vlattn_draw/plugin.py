"""Entry point of the built-in draw plugin: the ``draw`` task and the ``vlattn draw`` command.

Imports no torch: the task is named by a dotted factory and the command imports torch when run.
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
    """Register the ``draw`` task."""
    register(
        TaskSpec(
            name="draw",
            factory="vlattn_draw.task:DrawTask",
            summary="DRAW (Gregor et al. 2015): recurrent VAE with Gaussian read/write attention",
        )
    )


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add ``vlattn draw``."""
    from vlattn_draw.cli import draw_command

    cli.add_command(draw_command)


@hookimpl
def register_views(register: Callable[..., None]) -> None:
    """Add the DRAW page to ``vlattn serve``."""
    from vlattn_draw.view import VIEW

    register(VIEW)
