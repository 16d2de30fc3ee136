"""Entry point of the built-in draw plugin."""

from __future__ import annotations
