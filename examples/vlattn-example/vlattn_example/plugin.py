"""The plugin module named by the entry point: hook implementations only, no torch import.

Factories are dotted strings, so ``vlattn list`` can show what this plugin offers without
importing the modules that need torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vlattn import hookimpl
from vlattn.registry import AttentionSpec, TaskSpec

if TYPE_CHECKING:
    import click


@hookimpl
def register_attention(register: Callable[[AttentionSpec], None]) -> None:
    register(
        AttentionSpec(
            name="cosine",
            factory="vlattn_example.attention:CosineAttention",
            summary="cosine similarity of query and keys, with a learned temperature",
            formula="score = exp(t) * cos(W q, k)",
            paper="Graves et al. 2014, Neural Turing Machines (content-based addressing)",
        )
    )


@hookimpl
def register_tasks(register: Callable[[TaskSpec], None]) -> None:
    register(
        TaskSpec(
            name="find-marker",
            factory="vlattn_example.task:FindMarkerTask",
            summary="toy task: does a token sequence contain the marker token?",
        )
    )


@hookimpl
def register_commands(cli: click.Group) -> None:
    from vlattn_example.commands import find_marker_command  # click only: torch is imported when it runs

    cli.add_command(find_marker_command)
