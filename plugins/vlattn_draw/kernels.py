"""Python binding of DRAW's native float32 kernels (``kernels.c``): tensor arguments in, results in place.

:func:`load` returns the loaded kernels, or ``None`` where there are none (no C compiler,
``VLATTN_NATIVE=0``, a failed build: :mod:`vlattn.native_build`); :mod:`vlattn_draw.fused` then runs
its PyTorch code, which computes the same values. Every tensor passed must be float32 on the CPU with
contiguous rows; the stride between batch rows is read from each tensor.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

import torch

from vlattn.native_build import load_library
from vlattn_draw.filterbank import VARIANCE_FLOOR, WINDOW_PARAMS

__all__ = ["DrawKernels", "load"]

_P, _L = ctypes.c_void_p, ctypes.c_long
_SIGNATURES = {
    "vl_lstm_forward": [_P, _L, _P, _L, _P, _P, _P, _P, _L, _L],
    "vl_lstm_backward": [_P, _P, _P, _L, _P, _P, _P, _L, _L, _L],
    "vl_canvas_step": [_P, _P, _P, _L, _P, _L, _L],
    "vl_open_window": [_P, _L, _L, _L, _L, _L, _P, _L, _P, _L, _P, _L],
    "vl_window_grad": [_P, _L, _L, _L, _L, _L, _P, _L, _P, _L, _P, _L, _P, _L, _P, _P, _L],
    "vl_read": [_P, _L, _L, _L, _L, _L, _P, _L, _P, _L, _P, _L, _P, _L, _P, _L],
    "vl_read_backward": [
        _P,
        _L,
        _P,
        _L,
        _P,
        _L,
        _L,
        _L,
        _L,
        _L,
        _P,
        _L,
        _P,
        _L,
        _P,
        _L,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _L,
    ],
    "vl_write": [_P, _L, _L, _L, _L, _L, _P, _L, _P, _L, _P, _L, _P, _P, _L],
    "vl_write_backward": [_P, _P, _L, _L, _L, _L, _L, _P, _L, _P, _L, _P, _L, _P, _P, _L, _P, _P, _P, _P, _L],
}


def _stride(tensor: torch.Tensor) -> int:
    """Elements between consecutive batch rows (dimension 0)."""
    return tensor.stride(0)


class DrawKernels:
    """The kernels of ``kernels.c`` with tensor arguments (shapes as in :mod:`vlattn_draw.fused`)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        for name, argtypes in _SIGNATURES.items():
            function = getattr(library, name)
            function.argtypes, function.restype = argtypes, None
        self._library = library
        self.window_params = ctypes.c_long.in_dll(library, "vl_window_params").value
        self.variance_floor = ctypes.c_float.in_dll(library, "vl_variance_floor").value
        if self.window_params != WINDOW_PARAMS or self.variance_floor != torch.tensor(VARIANCE_FLOOR).item():
            raise RuntimeError("kernels.c disagrees with vlattn_draw.filterbank on the window's constants")

    def lstm_forward(
        self,
        gates: torch.Tensor,
        extra: torch.Tensor | None,
        cell: torch.Tensor,
        new_cell: torch.Tensor,
        tanh_cell: torch.Tensor,
        hidden: torch.Tensor,
    ) -> None:
        """``gates [Bt, 4H] (+= extra)`` activated in place; fills ``new_cell``, ``tanh_cell``, ``hidden``
        ``[Bt, H]``."""
        batch, size = cell.shape
        self._library.vl_lstm_forward(
            gates.data_ptr(),
            _stride(gates),
            None if extra is None else extra.data_ptr(),
            0 if extra is None else _stride(extra),
            cell.data_ptr(),
            new_cell.data_ptr(),
            tanh_cell.data_ptr(),
            hidden.data_ptr(),
            batch,
            size,
        )

    def lstm_backward(
        self,
        grad_hidden: torch.Tensor,
        grad_cell: torch.Tensor,
        activations: torch.Tensor,
        old_cell: torch.Tensor,
        tanh_cell: torch.Tensor,
        grad_gates: torch.Tensor,
    ) -> torch.Tensor:
        """Fills ``grad_gates [Bt, 4H]``; ``grad_cell [Bt, H]`` becomes the old cell's gradient (returned)."""
        batch, size = old_cell.shape
        self._library.vl_lstm_backward(
            grad_hidden.data_ptr(),
            grad_cell.data_ptr(),
            activations.data_ptr(),
            _stride(activations),
            old_cell.data_ptr(),
            tanh_cell.data_ptr(),
            grad_gates.data_ptr(),
            _stride(grad_gates),
            batch,
            size,
        )
        return grad_cell

    def canvas_step(self, canvas: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor, slope: torch.Tensor) -> None:
        """``x_hat = x - sigmoid(canvas)`` and ``slope = sigmoid'(canvas)``, all ``[Bt, C, H, W]``."""
        batch = canvas.shape[0]
        self._library.vl_canvas_step(
            canvas.data_ptr(),
            x.data_ptr(),
            x_hat.data_ptr(),
            _stride(x_hat),
            slope.data_ptr(),
            batch,
            canvas[0].numel(),
        )

    def open_window(
        self, params: torch.Tensor, width: int, height: int, fx: torch.Tensor, fy: torch.Tensor, gamma: torch.Tensor
    ) -> None:
        """Filterbanks ``fx [Bt, N, W]``, ``fy [Bt, N, H]`` and ``gamma [Bt]`` of raw ``params [Bt, WINDOW_PARAMS]``."""
        batch, grid = fx.shape[:2]
        self._library.vl_open_window(
            params.data_ptr(),
            _stride(params),
            batch,
            grid,
            width,
            height,
            fx.data_ptr(),
            _stride(fx),
            fy.data_ptr(),
            _stride(fy),
            gamma.data_ptr(),
            _stride(gamma),
        )

    def window_grad(
        self,
        params: torch.Tensor,
        fx: torch.Tensor,
        fy: torch.Tensor,
        grad_fx: torch.Tensor,
        grad_fy: torch.Tensor,
        grad_log_gamma: torch.Tensor | None,
        out: torch.Tensor,
    ) -> None:
        """Gradient ``out [Bt, WINDOW_PARAMS]`` of the raw parameters from those of ``fx``, ``fy`` and ``log gamma``."""
        batch, grid, width = fx.shape
        self._library.vl_window_grad(
            params.data_ptr(),
            _stride(params),
            batch,
            grid,
            width,
            fy.shape[2],
            fx.data_ptr(),
            _stride(fx),
            fy.data_ptr(),
            _stride(fy),
            grad_fx.data_ptr(),
            _stride(grad_fx),
            grad_fy.data_ptr(),
            _stride(grad_fy),
            None if grad_log_gamma is None else grad_log_gamma.data_ptr(),
            out.data_ptr(),
            _stride(out),
        )

    def read(
        self,
        images: torch.Tensor,
        fx: torch.Tensor,
        fy: torch.Tensor,
        gamma: torch.Tensor,
        glimpse: torch.Tensor,
        columns: torch.Tensor,
    ) -> None:
        """``glimpse [Bt, I*N*N] = gamma * F_Y images F_X^T`` for ``images [Bt, I, H, W]``; ``columns
        [Bt, I, N, H]`` (contiguous) receives ``F_X images^T`` for the backward."""
        batch, count, height, width = images.shape
        self._library.vl_read(
            images.data_ptr(),
            _stride(images),
            count,
            height,
            width,
            fx.shape[1],
            fx.data_ptr(),
            _stride(fx),
            fy.data_ptr(),
            _stride(fy),
            gamma.data_ptr(),
            _stride(gamma),
            glimpse.data_ptr(),
            _stride(glimpse),
            columns.data_ptr(),
            batch,
        )

    def read_backward(
        self,
        grad_glimpse: torch.Tensor,
        glimpse: torch.Tensor,
        images: torch.Tensor,
        fx: torch.Tensor,
        fy: torch.Tensor,
        gamma: torch.Tensor,
        columns: torch.Tensor,
        slope: torch.Tensor,
        grad_canvas: torch.Tensor,
        grad_fx: torch.Tensor,
        grad_fy: torch.Tensor,
        grad_log_gamma: torch.Tensor,
        scratch: torch.Tensor,
    ) -> None:
        """Backward of :meth:`read` over ``images = [x, x_hat]`` (``C`` channels each): fills ``grad_fx
        [Bt, N, W]``, ``grad_fy [Bt, N, H]``, ``grad_log_gamma [Bt]`` and subtracts ``slope`` times the
        gradient of ``x_hat`` from ``grad_canvas [Bt, C, H, W]``. ``scratch``: ``2C*H*N`` floats."""
        batch, count, height, width = images.shape
        self._library.vl_read_backward(
            grad_glimpse.data_ptr(),
            _stride(grad_glimpse),
            glimpse.data_ptr(),
            _stride(glimpse),
            images.data_ptr(),
            _stride(images),
            count // 2,
            height,
            width,
            fx.shape[1],
            fx.data_ptr(),
            _stride(fx),
            fy.data_ptr(),
            _stride(fy),
            gamma.data_ptr(),
            _stride(gamma),
            columns.data_ptr(),
            slope.data_ptr(),
            grad_canvas.data_ptr(),
            grad_fx.data_ptr(),
            grad_fy.data_ptr(),
            grad_log_gamma.data_ptr(),
            scratch.data_ptr(),
            batch,
        )

    def write(
        self,
        patch: torch.Tensor,
        fx: torch.Tensor,
        fy: torch.Tensor,
        gamma: torch.Tensor,
        canvas: torch.Tensor,
        scaled: torch.Tensor,
    ) -> None:
        """``canvas [Bt, C, H, W] += F_Y^T patch F_X / gamma`` for ``patch [Bt, C*N*N]``; ``scaled
        [Bt, C, N, W]`` (contiguous) receives ``patch F_X / gamma`` for the backward."""
        batch, channels, height, width = canvas.shape
        self._library.vl_write(
            patch.data_ptr(),
            _stride(patch),
            channels,
            height,
            width,
            fx.shape[1],
            fx.data_ptr(),
            _stride(fx),
            fy.data_ptr(),
            _stride(fy),
            gamma.data_ptr(),
            _stride(gamma),
            canvas.data_ptr(),
            scaled.data_ptr(),
            batch,
        )

    def write_backward(
        self,
        grad_canvas: torch.Tensor,
        patch: torch.Tensor,
        fx: torch.Tensor,
        fy: torch.Tensor,
        gamma: torch.Tensor,
        scaled: torch.Tensor,
        grad_patch: torch.Tensor,
        grad_fx: torch.Tensor,
        grad_fy: torch.Tensor,
        grad_log_gamma: torch.Tensor,
        scratch: torch.Tensor,
    ) -> None:
        """Backward of :meth:`write`: fills ``grad_patch [Bt, C*N*N]``, ``grad_fx``, ``grad_fy`` and
        ``grad_log_gamma``. ``scratch``: ``C*N*W`` floats."""
        batch, channels, height, width = grad_canvas.shape
        self._library.vl_write_backward(
            grad_canvas.data_ptr(),
            patch.data_ptr(),
            _stride(patch),
            channels,
            height,
            width,
            fx.shape[1],
            fx.data_ptr(),
            _stride(fx),
            fy.data_ptr(),
            _stride(fy),
            gamma.data_ptr(),
            _stride(gamma),
            scaled.data_ptr(),
            grad_patch.data_ptr(),
            _stride(grad_patch),
            grad_fx.data_ptr(),
            grad_fy.data_ptr(),
            grad_log_gamma.data_ptr(),
            scratch.data_ptr(),
            batch,
        )


@cache
def load() -> DrawKernels | None:
    """The native kernels, compiled on first use; ``None`` where they are unavailable."""
    library = load_library(Path(__file__).with_name("kernels.c"))
    return None if library is None else DrawKernels(library)
