"""Registers the built-in attention mechanisms (loaded through the ``vlattn`` entry point)."""

from __future__ import annotations

from collections.abc import Callable

from vlattn.hookspecs import hookimpl
from vlattn.registry import AttentionSpec


@hookimpl
def register_attention(register: Callable[[AttentionSpec], None]) -> None:
    """Register every mechanism in :mod:`vlattn.attention`."""
