"""Former name of :mod:`vlattn_draw.kernels`, kept for code that imports it: ``kernels()`` is
:func:`vlattn_draw.kernels.load`."""

from __future__ import annotations

from vlattn_draw.kernels import DrawKernels
from vlattn_draw.kernels import load as kernels

__all__ = ["DrawKernels", "kernels"]
