"""The error attention mechanisms raise for options or inputs that cannot work."""

from __future__ import annotations

from vlattn.errors import VlattnError


class AttentionConfigError(VlattnError, ValueError):
    """A mechanism built with impossible options (``dot`` with different sizes, an unknown
    option name ...) or given inputs its options exclude (a source longer than ``max_len``).

    It is a :class:`VlattnError`, so the CLI reports it as one line, and a ``ValueError``.
    """
