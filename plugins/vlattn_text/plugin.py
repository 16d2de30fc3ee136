"""Entry point of the built-in text plugin."""

from __future__ import annotations
