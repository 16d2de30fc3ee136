"""vlattn: a plugin-based vision-and-language toolkit of classic attention models.

Importing :mod:`vlattn` is cheap: it loads no torch. The heavy pieces live in submodules
(:mod:`vlattn.attention`, :mod:`vlattn.train`) that are imported when used.
"""

from __future__ import annotations

__version__ = "0.1.0"

from vlattn.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]
