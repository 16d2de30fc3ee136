"""Entry point of the built-in caption plugin."""

from __future__ import annotations
