"""DRAW's training pass with a hand-written backward (backpropagation through time).

:func:`fused_forward` computes exactly what :meth:`vlattn_draw.model.Draw.forward` computes (the
same per-image reconstruction, KL and log-ratio terms and the final canvas), but runs the T steps
without recording an autograd graph and differentiates them in one reverse loop of its own:

* no autograd bookkeeping for the many small operations of every step (the filterbanks, the
  LSTM gates, the reparameterisation), which at the paper's sizes cost about as much as the
  matrix products themselves, and fewer of them: the LSTM gates are summed and activated in
  place, the two windows a decoder state emits (this step's write, the next step's read) are
  opened and differentiated together, the latent terms are summed over all steps at once;
* the weight gradients of the shared layers are one large matrix product each over all T steps
  (``[T*Bt, out]^T @ [T*Bt, in]``) instead of T small ones;
* activations are kept in ``[T, Bt, ...]`` buffers that later passes of the same size reuse;
* in float32 on the CPU, the work between the matrix products (LSTM updates, ``x_hat``, the
  windows' filterbanks, read and write, and their backwards) goes to the native kernels of
  :mod:`vlattn_draw.kernels` where they are available, one sweep over memory each.

Both implementations of that work have one interface, :class:`TorchKernels` (PyTorch code, any
dtype and device) and :class:`NativeKernels` (the C kernels); :func:`select_kernels` picks one per
pass and the tests compare the two. What a step reads and writes is one of two pieces each,
chosen once per pass: a Gaussian glimpse or the whole image (:class:`_GlimpseRead`,
:class:`_ImageRead`), a patch through a window or the whole canvas (:class:`_PatchWrite`,
:class:`_CanvasWrite`), each with its forward and backward.

The Bernoulli likelihood is differentiated directly; other likelihoods of the final canvas go
through autograd (one operation). Gradients flow to every parameter and through every output
(``reconstruction``, ``kl``, ``log_ratio`` and ``canvas_logits``); the tests compare them with
autograd's in float64.

Notation below: ``Bt`` batch, ``C`` channels, ``H x W`` image, ``N`` grid size, ``He`` / ``Hd``
encoder / decoder units, ``Z`` latent units, ``T`` steps, ``K`` windows in a row of ``dec_out``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, Protocol

import torch

from vlattn_draw import kernels as compiled_kernels
from vlattn_draw.filterbank import VARIANCE_FLOOR, WINDOW_PARAMS

__all__ = [
    "DrawPass",
    "NativeKernels",
    "PassLayout",
    "PassWeights",
    "TorchKernels",
    "fused_forward",
    "release_workspaces",
    "select_kernels",
]

NegLogLikelihood = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
WindowGrads = tuple[torch.Tensor, ...]  # (grad F_X [Bt, N, W], grad F_Y [Bt, N, H], grad log gamma [Bt]), or ()


# -- what the pass is given ----------------------------------------------------------------------
@dataclass(frozen=True)
class PassLayout:
    """The sizes of a DRAW network (static per model; hashable, it keys the buffer pool).

    ``dec_sizes`` are the column widths of ``dec_out = [write | write window | read window | enc
    gates | dec gates]``, ``enc_sizes`` those of ``enc_out = [mu | log sigma | enc gates]``.
    """

    channels: int
    height: int
    width: int
    steps: int
    read_attention: bool
    write_attention: bool
    read_n: int
    write_n: int
    enc_size: int
    dec_size: int
    z_size: int
    likelihood: str
    dec_sizes: tuple[int, ...]
    enc_sizes: tuple[int, ...]

    @property
    def read_size(self) -> int:
        """Features of one step's read ``r_t`` (of ``x`` and ``x_hat``)."""
        per_image = self.read_n**2 if self.read_attention else self.height * self.width
        return 2 * self.channels * per_image


@dataclass(frozen=True)
class PassWeights:
    """The parameters of a DRAW network, in the order the autograd function takes them:
    ``dec_weight [sum(dec_sizes), Hd]``, ``dec_bias``, ``enc_weight [sum(enc_sizes), He]``,
    ``enc_bias``, ``read_weight [4He, read_size]``, ``z_weight [4Hd, Z]``, ``canvas0 [C, H, W]``,
    ``h_enc0 [He]``, ``h_dec0 [Hd]``."""

    dec_weight: torch.Tensor
    dec_bias: torch.Tensor
    enc_weight: torch.Tensor
    enc_bias: torch.Tensor
    read_weight: torch.Tensor
    z_weight: torch.Tensor
    canvas0: torch.Tensor
    h_enc0: torch.Tensor
    h_dec0: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, field.name) for field in fields(self))


@dataclass(frozen=True)
class DrawPass:
    """A DRAW network as the fused pass takes it (:meth:`vlattn_draw.model.Draw._fused_pass`)."""

    layout: PassLayout
    weights: PassWeights
    neg_log_likelihood: NegLogLikelihood  # [Bt, C, H, W] logits, x -> [Bt]
    native_kernels: bool = True  # use the C kernels where they apply


# -- filterbank pieces (forward keeps what the backward needs) ----------------------------------
_CONSTANTS: dict[tuple[Any, ...], tuple[torch.Tensor, ...]] = {}


@dataclass(frozen=True)
class _RowLayout:
    """Constants of the windows that share a row of ``dec_out`` (K of them, grids ``N_k``): their
    filters are stacked along one axis of ``R = sum N_k`` rows."""

    grids: tuple[int, ...]
    width: int
    height: int

    @cached_property
    def rows(self) -> list[slice]:
        """The rows of ``R`` that window ``k`` owns."""
        ends = [sum(self.grids[: k + 1]) for k in range(len(self.grids))]
        return [slice(end - n, end) for end, n in zip(ends, self.grids, strict=True)]

    def constants(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(half [2], unit [K], window_of_row [R], offsets [R], segment [R, K], pixels_x, pixels_y)``,
        cached per dtype and device."""
        key = (self, like.dtype, like.device)
        if key not in _CONSTANTS:
            new = {"dtype": like.dtype, "device": like.device}
            grids = self.grids
            half = torch.tensor([(self.width + 1) / 2, (self.height + 1) / 2], **new)
            extent = max(self.width, self.height) - 1
            unit = torch.tensor([extent / max(n - 1, 1) for n in grids], **new)
            window_of_row = torch.cat([torch.full((n,), k) for k, n in enumerate(grids)]).to(like.device)
            offsets = torch.cat([torch.arange(1, n + 1, **new) - n / 2 - 0.5 for n in grids])
            segment = torch.nn.functional.one_hot(window_of_row, len(grids)).to(like.dtype)
            pixels_x = torch.arange(1, self.width + 1, **new)
            pixels_y = torch.arange(1, self.height + 1, **new)
            _CONSTANTS[key] = (half, unit, window_of_row, offsets, segment, pixels_x, pixels_y)
        return _CONSTANTS[key]


class _OpenWindows(Protocol):
    """The filterbanks of the K windows of one ``dec_out`` row, as either implementation keeps them."""

    gamma: torch.Tensor  # [Bt, K]

    def fx(self, k: int) -> torch.Tensor: ...

    def fy(self, k: int) -> torch.Tensor: ...


@dataclass
class _Windows:
    """The filterbanks of the K windows of one ``dec_out`` row, for a batch
    (:mod:`vlattn_draw.filterbank`'s formulas), and what their backward needs.

    ``filters`` is ``[Bt, 2, R, A]`` (x then y) for square images, else a pair ``[Bt, 1, R, A]``,
    ``[Bt, 1, R, B]``; ``diffs`` the matching ``pixel - mean``. Window ``k`` owns rows
    ``layout.rows[k]`` of ``R``.
    """

    layout: _RowLayout
    filters: list[torch.Tensor]
    diffs: list[torch.Tensor]
    inv_var: torch.Tensor  # [Bt, R]  1 / max(sigma^2, VARIANCE_FLOOR) of each row's window
    variance: torch.Tensor  # [Bt, K]
    stride: torch.Tensor  # [Bt, K]
    gamma: torch.Tensor  # [Bt, K]

    def fx(self, k: int) -> torch.Tensor:
        """``F_X [Bt, N_k, A]`` of window ``k``."""
        return self.filters[0][:, 0, self.layout.rows[k]]

    def fy(self, k: int) -> torch.Tensor:
        """``F_Y [Bt, N_k, B]`` of window ``k``."""
        return self.filters[-1][:, -1, self.layout.rows[k]]


def _open_windows(params: torch.Tensor, layout: _RowLayout) -> _Windows:
    """Filterbanks of the raw parameters ``[Bt, K, WINDOW_PARAMS]`` = ``(g~x, g~y, log sigma^2,
    log delta~, log gamma)``."""
    half, unit, window_of_row, offsets, _, pixels_x, pixels_y = layout.constants(params)
    centers = torch.addcmul(half, params[..., :2], half)  # [Bt, K, 2]: g = (A + 1) / 2 * (g~ + 1)
    variance, stride, gamma = params[..., 2:].exp().unbind(dim=-1)  # [Bt, K] each
    stride = stride * unit
    if len(layout.grids) == 1:  # one window: its values broadcast over the rows
        inv_var = variance.clamp_min(VARIANCE_FLOOR).reciprocal().expand(-1, len(offsets))  # [Bt, R]
        means = torch.addcmul(centers.transpose(1, 2), offsets, stride.unsqueeze(1))  # [Bt, 2, R]
    else:
        inv_var = variance.clamp_min(VARIANCE_FLOOR).reciprocal().index_select(1, window_of_row)
        means = torch.addcmul(
            centers.index_select(1, window_of_row).transpose(1, 2),
            offsets,
            stride.index_select(1, window_of_row).unsqueeze(1),
        )
    scale = (-0.5 * inv_var).unsqueeze(1).unsqueeze(-1)  # [Bt, 1, R, 1]
    if layout.width == layout.height:
        axes = [(means, pixels_x)]
    else:
        axes = [(means[:, :1], pixels_x), (means[:, 1:], pixels_y)]
    filters, diffs = [], []
    for axis_means, pixels in axes:
        diff = pixels - axis_means.unsqueeze(-1)  # [Bt, a, R, size]
        filters.append(torch.softmax(diff.square().mul_(scale), dim=-1))
        diffs.append(diff)
    return _Windows(layout, filters, diffs, inv_var, variance, stride, gamma)


def _windows_param_grad(
    windows: _Windows,
    grad_fx: list[torch.Tensor],
    grad_fy: list[torch.Tensor],
    grad_log_gamma: list[torch.Tensor],
    out: torch.Tensor,
) -> None:
    """Write the gradient of the raw ``[Bt, K, WINDOW_PARAMS]`` window parameters into ``out``, from
    the gradients of each window's ``F_X [Bt, N_k, A]``, ``F_Y [Bt, N_k, B]`` and ``log gamma [Bt]``."""
    layout = windows.layout
    half, _, _, offsets, segment, _, _ = layout.constants(out)
    if layout.width == layout.height:
        grads = [torch.stack([torch.cat(grad_fx, dim=1), torch.cat(grad_fy, dim=1)], dim=1)]
    else:
        grads = [torch.cat(grad_fx, dim=1).unsqueeze(1), torch.cat(grad_fy, dim=1).unsqueeze(1)]
    mean_grads, var_grad = [], 0.0
    for filters, diff, grad in zip(windows.filters, windows.diffs, grads, strict=True):
        weighted = (grad - (grad * filters).sum(dim=-1, keepdim=True)).mul_(filters).mul_(diff)  # dlogit*(a-mu)
        mean_grads.append(weighted.sum(dim=-1))  # [Bt, a, R], times 1/sigma^2 below
        var_grad = var_grad + (weighted * diff).sum(dim=(1, 3))  # [Bt, R], times 1/(2 sigma^4) below
    inv_var = windows.inv_var
    mean_grad = torch.cat(mean_grads, dim=1).mul_(inv_var.unsqueeze(1))  # [Bt, 2, R]
    # Rows -> windows: one product with the row-to-window indicator [R, K].
    torch.mul((mean_grad @ segment).transpose(1, 2), half, out=out[..., :2])
    stride_grad = ((mean_grad * offsets).sum(dim=1) @ segment) * windows.stride
    var_grad = ((var_grad * (0.5 * inv_var.square())) @ segment) * windows.variance
    var_grad = var_grad * (windows.variance >= VARIANCE_FLOOR)
    out[..., 2:] = torch.stack([var_grad, stride_grad, torch.stack(grad_log_gamma, dim=-1)], dim=-1)


@dataclass
class _NativeWindows:
    """:class:`_Windows` computed by the native kernels: one ``F_X [Bt, N_k, A]``, ``F_Y [Bt, N_k, B]``
    per window, ``gamma [Bt, K]``; the backward recomputes the rest from the raw
    ``params [Bt, K, WINDOW_PARAMS]``."""

    params: torch.Tensor
    fxs: list[torch.Tensor]
    fys: list[torch.Tensor]
    gamma: torch.Tensor

    def fx(self, k: int) -> torch.Tensor:
        return self.fxs[k]

    def fy(self, k: int) -> torch.Tensor:
        return self.fys[k]


# -- LSTM pieces --------------------------------------------------------------------------------
def _lstm_forward(
    gates: torch.Tensor, cell: torch.Tensor, new_cell: torch.Tensor, tanh_cell: torch.Tensor, hidden: torch.Tensor
) -> None:
    """One LSTM update (gate order i, f, o, g), in place.

    ``gates [Bt, 4H]`` holds the pre-activations and receives ``[sigmoid(i, f, o), tanh(g)]``;
    ``new_cell`` / ``tanh_cell`` / ``hidden`` receive the new ``c``, ``tanh(c)`` and ``h`` (``[Bt, H]``).
    """
    size = cell.shape[-1]
    gates[:, : 3 * size].sigmoid_()
    gates[:, 3 * size :].tanh_()
    i, f, o, g = gates.split(size, dim=-1)
    torch.mul(f, cell, out=new_cell)
    new_cell.addcmul_(i, g)
    torch.tanh(new_cell, out=tanh_cell)
    torch.mul(o, tanh_cell, out=hidden)


def _lstm_backward(
    grad_hidden: torch.Tensor,
    grad_cell: torch.Tensor,
    activations: torch.Tensor,
    old_cell: torch.Tensor,
    tanh_cell: torch.Tensor,
    grad_gates: torch.Tensor,
) -> torch.Tensor:
    """Backward of :func:`_lstm_forward`: fills ``grad_gates [Bt, 4H]`` (pre-activation) and
    returns the gradient of the previous cell. ``grad_cell`` (of the new cell) is updated in place."""
    size = old_cell.shape[-1]
    i, f, o, g = activations.split(size, dim=-1)
    grad_i, grad_f, grad_o, grad_g = grad_gates.split(size, dim=-1)
    torch.mul(grad_hidden, tanh_cell, out=grad_o)
    grad_cell.add_(_TANH_BACKWARD(grad_hidden * o, tanh_cell))  # dh * o * (1 - tanh(c)^2)
    torch.mul(grad_cell, g, out=grad_i)
    torch.mul(grad_cell, old_cell, out=grad_f)
    torch.mul(grad_cell, i, out=grad_g)
    sigmoid_part = grad_gates[:, : 3 * size]
    _SIGMOID_BACKWARD_OUT(sigmoid_part, activations[:, : 3 * size], grad_input=sigmoid_part)
    _TANH_BACKWARD_OUT(grad_g, g, grad_input=grad_g)
    return grad_cell * f


# One-kernel derivatives of sigmoid and tanh from their outputs: grad * y * (1 - y), grad * (1 - y^2).
_SIGMOID_BACKWARD_OUT = torch.ops.aten.sigmoid_backward.grad_input
_TANH_BACKWARD = torch.ops.aten.tanh_backward.default
_TANH_BACKWARD_OUT = torch.ops.aten.tanh_backward.grad_input


# -- read and write of a glimpse as PyTorch code -------------------------------------------------
def _add_rows(canvas: torch.Tensor, fy: torch.Tensor, scaled: torch.Tensor) -> None:
    """``canvas += F_Y^T @ scaled`` per channel: ``[Bt, C, H, W] += [Bt, N, H]^T @ [Bt, C*N, W]``."""
    batch, channels, height, width = canvas.shape
    if channels == 1:
        canvas.view(batch, height, width).baddbmm_(fy.transpose(1, 2), scaled)
        return
    grid = fy.shape[1]
    side_by_side = scaled.view(batch, channels, grid, width).transpose(1, 2).reshape(batch, grid, -1)
    spread = torch.bmm(fy.transpose(1, 2), side_by_side)  # [Bt, H, C*W]
    canvas.add_(spread.view(batch, height, channels, width).transpose(1, 2))


def _rows_backward(
    grad_canvas: torch.Tensor, fy: torch.Tensor, scaled: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of :func:`_add_rows`: the gradients of ``scaled [Bt, C*N, W]`` and ``F_Y [Bt, N, H]``."""
    batch, channels, height, width = grad_canvas.shape
    if channels == 1:
        grad = grad_canvas.view(batch, height, width)
        return torch.bmm(fy, grad), torch.bmm(scaled, grad.transpose(1, 2))
    grid = fy.shape[1]
    side_by_side = grad_canvas.transpose(1, 2).reshape(batch, height, channels * width)  # [Bt, H, C*W]
    grad_scaled = torch.bmm(fy, side_by_side).view(batch, grid, channels, width).transpose(1, 2)
    scaled_side = scaled.view(batch, channels, grid, width).transpose(1, 2).reshape(batch, grid, -1)
    grad_fy = torch.bmm(scaled_side, side_by_side.transpose(1, 2))
    return grad_scaled.reshape(batch, channels * grid, width), grad_fy


# -- the two implementations of the work between the matrix products -----------------------------
class TorchKernels:
    """The pointwise and filterbank work of a pass as PyTorch code (any dtype, any device).

    Shapes: ``images [Bt, 2C, H, W]`` (``x`` then ``x_hat``), ``glimpse [Bt, 2C*N*N]``, ``patch
    [Bt, C*N*N]``, ``canvas [Bt, C, H, W]``, ``fx [Bt, N, W]``, ``fy [Bt, N, H]``, ``gamma [Bt]``.
    :class:`NativeKernels` has the same methods.
    """

    def lstm_forward(
        self,
        gates: torch.Tensor,
        extra: torch.Tensor | None,
        cell: torch.Tensor,
        new_cell: torch.Tensor,
        tanh_cell: torch.Tensor,
        hidden: torch.Tensor,
    ) -> None:
        """``gates [Bt, 4H] (+= extra)`` activated in place (order i, f, o, g); fills ``new_cell``,
        ``tanh_cell`` and ``hidden`` ``[Bt, H]``."""
        if extra is not None:
            gates.add_(extra)
        _lstm_forward(gates, cell, new_cell, tanh_cell, hidden)

    def lstm_backward(
        self,
        grad_hidden: torch.Tensor,
        grad_cell: torch.Tensor,
        activations: torch.Tensor,
        old_cell: torch.Tensor,
        tanh_cell: torch.Tensor,
        grad_gates: torch.Tensor,
    ) -> torch.Tensor:
        """Fills ``grad_gates [Bt, 4H]``; returns the old cell's gradient (``grad_cell`` is updated)."""
        return _lstm_backward(grad_hidden, grad_cell, activations, old_cell, tanh_cell, grad_gates)

    def canvas_step(self, canvas: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor, slope: torch.Tensor) -> None:
        """``x_hat = x - sigmoid(canvas)`` and ``slope = sigmoid'(canvas)``, all ``[Bt, C, H, W]``."""
        sigmoid = torch.sigmoid(canvas)
        torch.sub(x, sigmoid, out=x_hat)
        torch.addcmul(sigmoid, sigmoid, sigmoid, value=-1, out=slope)

    def open_row(self, params: torch.Tensor, layout: _RowLayout) -> _OpenWindows:
        """The K windows of raw ``params [Bt, K, WINDOW_PARAMS]``."""
        return _open_windows(params, layout)

    def row_param_grad(self, windows: _OpenWindows, grads: list[WindowGrads], out: torch.Tensor) -> None:
        """The gradient ``out [Bt, K, WINDOW_PARAMS]`` of a row's raw parameters from each window's
        ``(grad F_X, grad F_Y, grad log gamma)``."""
        assert isinstance(windows, _Windows)
        _windows_param_grad(windows, [g[0] for g in grads], [g[1] for g in grads], [g[2] for g in grads], out)

    def read(
        self, images: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, gamma: torch.Tensor, glimpse: torch.Tensor
    ) -> torch.Tensor:
        """``glimpse = gamma * F_Y images F_X^T``; returns what :meth:`read_backward` needs."""
        batch, images_count, height, width = images.shape
        grid = fx.shape[1]
        # All 2C images as one product each: columns first, then rows.
        columns = torch.bmm(images.view(batch, -1, width), fx.transpose(1, 2))  # [Bt, 2C*H, N]
        columns = columns.view(batch, images_count, height, grid).transpose(1, 2)
        columns = columns.reshape(batch, height, images_count * grid)  # [Bt, H, 2C*N]
        product = torch.bmm(fy, columns).view(batch, grid, images_count, grid).transpose(1, 2)
        torch.mul(product, gamma.view(-1, 1, 1, 1), out=glimpse.view(batch, images_count, grid, -1))
        return columns

    def read_backward(
        self,
        grad_glimpse: torch.Tensor,
        glimpse: torch.Tensor,
        images: torch.Tensor,
        fx: torch.Tensor,
        fy: torch.Tensor,
        gamma: torch.Tensor,
        saved: torch.Tensor,
        slope: torch.Tensor,
        grad_canvas: torch.Tensor,
    ) -> WindowGrads:
        """Backward of :meth:`read`; subtracts ``slope`` times the gradient of ``x_hat`` from
        ``grad_canvas`` (``x_hat = x - sigmoid(canvas)``)."""
        batch, images_count, height, width = images.shape
        channels, grid = images_count // 2, fx.shape[1]
        grad_log_gamma = (grad_glimpse * glimpse).sum(dim=-1)
        grad_product = grad_glimpse.view(batch, images_count, grid, grid) * gamma.view(-1, 1, 1, 1)
        grad_product = grad_product.transpose(1, 2).reshape(batch, grid, images_count * grid)
        grad_fy = torch.bmm(grad_product, saved.transpose(1, 2))  # [Bt, N, H]
        grad_columns = torch.bmm(fy.transpose(1, 2), grad_product)  # [Bt, H, 2C*N]
        grad_columns = grad_columns.view(batch, height, images_count, grid).transpose(1, 2)
        grad_columns = grad_columns.reshape(batch, images_count * height, grid)  # [Bt, 2C*H, N]
        grad_fx = torch.bmm(grad_columns.transpose(1, 2), images.view(batch, -1, width))  # [Bt, N, W]
        grad_x_hat = torch.bmm(grad_columns[:, channels * height :], fx)  # [Bt, C*H, W]
        grad_canvas.addcmul_(grad_x_hat.view(batch, channels, height, width), slope, value=-1)
        return grad_fx, grad_fy, grad_log_gamma

    def write(
        self, patch: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, gamma: torch.Tensor, canvas: torch.Tensor
    ) -> torch.Tensor:
        """``canvas += F_Y^T patch F_X / gamma``; returns what :meth:`write_backward` needs."""
        batch, grid = patch.shape[0], fx.shape[1]
        scaled = torch.bmm(patch.view(batch, -1, grid), fx).div_(gamma.view(-1, 1, 1))  # [Bt, C*N, W]
        _add_rows(canvas, fy, scaled)
        return scaled

    def write_backward(
        self,
        grad_canvas: torch.Tensor,
        patch: torch.Tensor,
        fx: torch.Tensor,
        fy: torch.Tensor,
        gamma: torch.Tensor,
        saved: torch.Tensor,
        grad_patch: torch.Tensor,
    ) -> WindowGrads:
        """Backward of :meth:`write`: fills ``grad_patch``."""
        batch, grid = patch.shape[0], fx.shape[1]
        grad_scaled, grad_fy = _rows_backward(grad_canvas, fy, saved)
        grad_log_gamma = -(grad_scaled * saved).sum(dim=(1, 2))  # [Bt]
        grad_columns = grad_scaled.div_(gamma.view(-1, 1, 1))  # of patch F_X, [Bt, C*N, W]
        grad_patch.copy_(torch.bmm(grad_columns, fx.transpose(1, 2)).flatten(1))
        grad_fx = torch.bmm(patch.view(batch, -1, grid).transpose(1, 2), grad_columns)
        return grad_fx, grad_fy, grad_log_gamma


class NativeKernels(TorchKernels):
    """:class:`TorchKernels`' methods by the native float32 kernels of :mod:`vlattn_draw.kernels`
    (tensors float32 on the CPU, rows contiguous)."""

    def __init__(self, library: compiled_kernels.DrawKernels) -> None:
        self.library = library
        self._scratch = torch.empty(0)

    def _scratch_of(self, size: int) -> torch.Tensor:
        """Room for the read and write kernels' per-image intermediates (``size`` floats)."""
        if self._scratch.numel() < size:
            self._scratch = torch.empty(size)
        return self._scratch

    def lstm_forward(
        self,
        gates: torch.Tensor,
        extra: torch.Tensor | None,
        cell: torch.Tensor,
        new_cell: torch.Tensor,
        tanh_cell: torch.Tensor,
        hidden: torch.Tensor,
    ) -> None:
        self.library.lstm_forward(gates, extra, cell, new_cell, tanh_cell, hidden)

    def lstm_backward(
        self,
        grad_hidden: torch.Tensor,
        grad_cell: torch.Tensor,
        activations: torch.Tensor,
        old_cell: torch.Tensor,
        tanh_cell: torch.Tensor,
        grad_gates: torch.Tensor,
    ) -> torch.Tensor:
        return self.library.lstm_backward(grad_hidden, grad_cell, activations, old_cell, tanh_cell, grad_gates)

    def canvas_step(self, canvas: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor, slope: torch.Tensor) -> None:
        self.library.canvas_step(canvas, x, x_hat, slope)

    def open_row(self, params: torch.Tensor, layout: _RowLayout) -> _OpenWindows:
        batch = params.shape[0]
        fxs = [params.new_empty(batch, n, layout.width) for n in layout.grids]
        fys = [params.new_empty(batch, n, layout.height) for n in layout.grids]
        gamma = params.new_empty(batch, len(layout.grids))
        for k in range(len(layout.grids)):
            self.library.open_window(params[:, k], layout.width, layout.height, fxs[k], fys[k], gamma[:, k])
        return _NativeWindows(params, fxs, fys, gamma)

    def row_param_grad(self, windows: _OpenWindows, grads: list[WindowGrads], out: torch.Tensor) -> None:
        assert isinstance(windows, _NativeWindows)
        for k, (grad_fx, grad_fy, grad_log_gamma) in enumerate(grads):
            self.library.window_grad(
                windows.params[:, k],
                windows.fxs[k],
                windows.fys[k],
                grad_fx,
                grad_fy,
                grad_log_gamma.contiguous(),
                out[:, k],
            )

    def read(
        self, images: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, gamma: torch.Tensor, glimpse: torch.Tensor
    ) -> torch.Tensor:
        batch, images_count, height, _ = images.shape
        columns = images.new_empty(batch, images_count, fx.shape[1], height)
        self.library.read(images, fx, fy, gamma, glimpse, columns)
        return columns

    def read_backward(
        self,
        grad_glimpse: torch.Tensor,
        glimpse: torch.Tensor,
        images: torch.Tensor,
        fx: torch.Tensor,
        fy: torch.Tensor,
        gamma: torch.Tensor,
        saved: torch.Tensor,
        slope: torch.Tensor,
        grad_canvas: torch.Tensor,
    ) -> WindowGrads:
        batch, images_count, height, width = images.shape
        grid = fx.shape[1]
        grad_fx, grad_fy, grad_log_gamma = (
            images.new_empty(batch, grid, width),
            images.new_empty(batch, grid, height),
            images.new_empty(batch),
        )
        self.library.read_backward(
            grad_glimpse.contiguous(),
            glimpse,
            images,
            fx,
            fy,
            gamma,
            saved,
            slope,
            grad_canvas,
            grad_fx,
            grad_fy,
            grad_log_gamma,
            self._scratch_of(images_count * height * grid),
        )
        return grad_fx, grad_fy, grad_log_gamma

    def write(
        self, patch: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, gamma: torch.Tensor, canvas: torch.Tensor
    ) -> torch.Tensor:
        batch, channels, _, width = canvas.shape
        scaled = canvas.new_empty(batch, channels, fx.shape[1], width)
        self.library.write(patch, fx, fy, gamma, canvas, scaled)
        return scaled

    def write_backward(
        self,
        grad_canvas: torch.Tensor,
        patch: torch.Tensor,
        fx: torch.Tensor,
        fy: torch.Tensor,
        gamma: torch.Tensor,
        saved: torch.Tensor,
        grad_patch: torch.Tensor,
    ) -> WindowGrads:
        batch, channels, height, width = grad_canvas.shape
        grid = fx.shape[1]
        grad_fx, grad_fy, grad_log_gamma = (
            grad_canvas.new_empty(batch, grid, width),
            grad_canvas.new_empty(batch, grid, height),
            grad_canvas.new_empty(batch),
        )
        self.library.write_backward(
            grad_canvas,
            patch,
            fx,
            fy,
            gamma,
            saved,
            grad_patch,
            grad_fx,
            grad_fy,
            grad_log_gamma,
            self._scratch_of(channels * grid * width),
        )
        return grad_fx, grad_fy, grad_log_gamma


_TORCH_KERNELS = TorchKernels()


def select_kernels(x: torch.Tensor, native: bool = True) -> TorchKernels:
    """The implementation a pass on ``x`` uses: the native kernels where they apply (``native``,
    float32 on the CPU, kernels available), else the PyTorch code."""
    if native and x.dtype == torch.float32 and x.device.type == "cpu":
        library = compiled_kernels.load()
        if library is not None:
            return NativeKernels(library)
    return _TORCH_KERNELS


# -- what a step reads and writes ------------------------------------------------------------------
class _GlimpseRead:
    """Read ``[x, x_hat]`` through window ``k`` of the row that a step's previous decoder state
    emitted: ``r_t [Bt, 2C*N*N]`` (kept for the weight gradient), then ``enc gates += r_t W^T``."""

    def __init__(self, kernels: TorchKernels, k: int) -> None:
        self.kernels, self.k = kernels, k
        self.saved: list[torch.Tensor] = []  # per step, what the kernels' read backward needs

    def start(self, draw_pass: _Pass) -> torch.Tensor | None:
        """Set up the views of ``draw_pass``'s buffers; returns gate inputs constant over the steps (none)."""
        work, channels = draw_pass.work, draw_pass.layout.channels
        work["images"][:, :, :channels] = draw_pass.x
        self.images, self.glimpses = work.rows("images"), work.rows("reads")
        draw_pass.x_hats = [step[:, channels:] for step in self.images]
        return None

    def forward(self, draw_pass: _Pass, t: int) -> torch.Tensor:
        """Step ``t``'s read, added to its encoder gates (returned)."""
        windows, k = draw_pass.opened[t], self.k
        self.saved.append(
            self.kernels.read(self.images[t], windows.fx(k), windows.fy(k), windows.gamma[:, k], self.glimpses[t])
        )
        return draw_pass.enc_gates[t].addmm_(self.glimpses[t], draw_pass.read_wt)

    def backward(self, draw_pass: _Pass, t: int) -> WindowGrads:
        """From step ``t``'s encoder gate gradient: the window's gradients, and ``x_hat``'s into the
        canvas gradient."""
        grad_glimpse = _times_weight(draw_pass.grad_enc_gates[t], draw_pass.read_wt)  # [Bt, 2C*N*N]
        windows, k = draw_pass.opened[t], self.k
        return self.kernels.read_backward(
            grad_glimpse,
            self.glimpses[t],
            self.images[t],
            windows.fx(k),
            windows.fy(k),
            windows.gamma[:, k],
            self.saved[t],
            draw_pass.slopes[t],
            draw_pass.grad_canvas,
        )

    def weight_grad(self, draw_pass: _Pass, grad_gates: torch.Tensor) -> torch.Tensor:
        """The read weight's gradient ``[4He, 2C*N*N]`` from the gate gradients ``[T, Bt, 4He]``."""
        return _weight_grad(grad_gates.flatten(0, 1), draw_pass.work["reads"].flatten(0, 1))


class _ImageRead:
    """Read the whole of ``[x, x_hat_t]``. Its product with the read weight is split,
    ``x W_x^T + x_hat_t W_x_hat^T``: the first term is the same at every step, so it is formed once
    (and folded into the encoder's bias), and its weight gradient is one product of the gate
    gradients summed over the steps; only ``x_hat_t``'s half is a product per step."""

    def start(self, draw_pass: _Pass) -> torch.Tensor | None:
        """Set up the views of ``draw_pass``'s buffers; returns ``x W_x^T [Bt, 4He]``."""
        pixels = draw_pass.layout.channels * draw_pass.layout.height * draw_pass.layout.width
        self.x_weight_t, self.x_hat_weight_t = draw_pass.read_wt[:pixels], draw_pass.read_wt[pixels:]
        self.x = draw_pass.x.view(draw_pass.batch, pixels)
        draw_pass.x_hats = draw_pass.work.rows("x_hat")
        self.flat_x_hats = [step.view(draw_pass.batch, pixels) for step in draw_pass.x_hats]
        return self.x @ self.x_weight_t

    def forward(self, draw_pass: _Pass, t: int) -> torch.Tensor:
        return draw_pass.enc_gates[t].addmm_(self.flat_x_hats[t], self.x_hat_weight_t)

    def backward(self, draw_pass: _Pass, t: int) -> WindowGrads:
        grad_x_hat = _times_weight(draw_pass.grad_enc_gates[t], self.x_hat_weight_t)  # [Bt, C*H*W]
        grad_canvas = draw_pass.grad_canvas
        grad_canvas.addcmul_(grad_x_hat.view(grad_canvas.shape), draw_pass.slopes[t], value=-1)
        return ()

    def weight_grad(self, draw_pass: _Pass, grad_gates: torch.Tensor) -> torch.Tensor:
        of_x = _weight_grad(grad_gates.sum(dim=0), self.x)
        of_x_hat = _weight_grad(grad_gates.flatten(0, 1), draw_pass.work["x_hat"].flatten(0, 1).flatten(1))
        return torch.cat([of_x, of_x_hat], dim=1)


class _PatchWrite:
    """Write a patch through window ``k`` of a decoder state's row."""

    def __init__(self, kernels: TorchKernels, k: int) -> None:
        self.kernels, self.k = kernels, k

    def forward(self, patch: torch.Tensor, windows: _OpenWindows, canvas: torch.Tensor) -> torch.Tensor:
        k = self.k
        return self.kernels.write(patch, windows.fx(k), windows.fy(k), windows.gamma[:, k], canvas)

    def backward(
        self,
        grad_canvas: torch.Tensor,
        patch: torch.Tensor,
        windows: _OpenWindows,
        saved: torch.Tensor,
        grad_patch: torch.Tensor,
    ) -> WindowGrads:
        k = self.k
        return self.kernels.write_backward(
            grad_canvas, patch, windows.fx(k), windows.fy(k), windows.gamma[:, k], saved, grad_patch
        )


class _CanvasWrite:
    """Add the whole canvas."""

    def forward(self, patch: torch.Tensor, windows: _OpenWindows | None, canvas: torch.Tensor) -> None:
        canvas.add_(patch.view(canvas.shape))

    def backward(
        self,
        grad_canvas: torch.Tensor,
        patch: torch.Tensor,
        windows: _OpenWindows | None,
        saved: None,
        grad_patch: torch.Tensor,
    ) -> WindowGrads:
        grad_patch.copy_(grad_canvas.flatten(1))
        return ()


# -- matrix products ---------------------------------------------------------------------------------
_NARROW = 128  # below this many columns a product is formed transposed (much faster in the BLAS)


def _times_weight(grad: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """``grad @ weight`` from ``weight_t = weight^T`` (contiguous): ``[Bt, out] -> [Bt, in]``."""
    if weight_t.shape[0] < _NARROW:
        return (weight_t @ grad.t()).t()
    return grad @ weight_t.t()


def _column_sums(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix.sum(dim=0)`` for a tall ``[rows, cols]`` matrix, as a matrix-vector product (the
    BLAS does it about twice as fast as the reduction)."""
    return torch.mv(matrix.t(), matrix.new_ones(matrix.shape[0]))


def _weight_grad(grad: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``grad^T @ inputs`` over all steps: ``[T*Bt, out], [T*Bt, in] -> [out, in]``."""
    if inputs.shape[-1] < _NARROW:
        return (inputs.t() @ grad).t()
    return grad.t() @ inputs


_COLUMN_MULTIPLE = 16  # dec_out is this many columns wider (zeros): the BLAS runs such widths faster


def _padded(width: int) -> int:
    return -(-width // _COLUMN_MULTIPLE) * _COLUMN_MULTIPLE


def _pad_columns(matrix: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``[..., n]`` with zero columns up to :func:`_padded` ``(n)``."""
    return torch.nn.functional.pad(matrix, (0, _padded(matrix.shape[-1]) - matrix.shape[-1])).contiguous()


# -- reusable buffers ------------------------------------------------------------------------------
class _Workspace:
    """The ``[T, Bt, ...]`` buffers of one pass (forward activations and backward gradients).

    A pass at the paper's sizes and batch 128 needs 306 MiB of them; freshly allocated, the operating
    system's first touch of those pages costs about as much as the pass's arithmetic, so finished
    workspaces go back to a pool and later passes of the same sizes reuse them.
    """

    def __init__(self, key: tuple[Any, ...], sizes: dict[str, tuple[int, ...]], like: torch.Tensor) -> None:
        self.key = key
        self.tensors = {name: like.new_empty(size) for name, size in sizes.items()}
        self._rows: dict[tuple[str, str], list[torch.Tensor]] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def rows(self, name: str, columns: slice | None = None) -> list[torch.Tensor]:
        """``[buffer[t][..., columns] for t]``: per-step views, made once per workspace (indexing
        costs as much Python time as a small operation)."""
        key = (name, str(columns))
        if key not in self._rows:
            steps = self.tensors[name].unbind(0)
            self._rows[key] = list(steps) if columns is None else [step[..., columns] for step in steps]
        return self._rows[key]


_POOL: dict[tuple[Any, ...], list[_Workspace]] = {}
_POOL_DEPTH = 2  # free workspaces kept per size


def _take_workspace(layout: PassLayout, batch: int, like: torch.Tensor) -> _Workspace:
    key = (layout, batch, like.dtype, like.device)
    free = _POOL.get(key)
    if free:
        return free.pop()
    steps, image = layout.steps, (layout.channels, layout.height, layout.width)
    enc_size, dec_size, dec_width = layout.enc_size, layout.dec_size, _padded(sum(layout.dec_sizes))
    if layout.read_attention:
        sizes = {
            "images": (steps, batch, 2 * layout.channels, layout.height, layout.width),  # [x, x_hat] per step
            "reads": (steps, batch, layout.read_size),
        }
    else:
        sizes = {"x_hat": (steps, batch, *image)}
    sizes |= {
        "sigmoid_slope": (steps, batch, *image),
        "enc_cell": (steps + 1, batch, enc_size),
        "dec_cell": (steps + 1, batch, dec_size),
        "enc_tanh": (steps, batch, enc_size),
        "dec_tanh": (steps, batch, dec_size),
        "h_enc": (steps + 1, batch, enc_size),
        "h_dec": (steps + 1, batch, dec_size),
        "enc_out": (steps + 1, batch, sum(layout.enc_sizes)),
        "dec_out": (steps + 1, batch, dec_width),
        "z": (steps, batch, layout.z_size),
        "latent_tmp": (steps, batch, layout.z_size),
        "grad_latent": (steps + 1, batch, 2 * layout.z_size),
        "grad_dec_out": (steps + 1, batch, dec_width),
    }
    work = _Workspace(key, sizes, like)
    work["grad_dec_out"][..., sum(layout.dec_sizes) :].zero_()  # padding: never written
    return work


def _give_back(work: _Workspace) -> None:
    free = _POOL.setdefault(work.key, [])
    if len(free) < _POOL_DEPTH:
        free.append(work)


def release_workspaces() -> None:
    """Free the pooled buffers of finished passes (they are reused by passes of the same sizes)."""
    _POOL.clear()


class _ColumnSpans:
    """Column slices of ``dec_out = [write | write window | read window | enc gates | dec gates | zeros]``
    and of ``enc_out = [mu | log sigma | enc gates]``."""

    def __init__(self, layout: PassLayout) -> None:
        write, write_params, read_params, enc_gates, dec_gates = layout.dec_sizes
        self.write = slice(0, write)
        self.head = slice(0, write + write_params)  # what step t itself uses
        start = write + write_params
        self.tail = slice(start, start + read_params + enc_gates + dec_gates)  # what step t + 1 uses
        self.enc_gates = slice(start + read_params, start + read_params + enc_gates)
        self.dec_gates = slice(start + read_params + enc_gates, start + read_params + enc_gates + dec_gates)
        self.windows = slice(write, start + read_params)  # [write window | read window]
        grids = ((layout.write_n,) if write_params else ()) + ((layout.read_n,) if read_params else ())
        self.row_layout = _RowLayout(grids, layout.width, layout.height) if grids else None
        self.write_k, self.read_k = 0, (1 if write_params else 0)
        self.mu = slice(0, layout.z_size)
        self.log_sigma = slice(layout.z_size, 2 * layout.z_size)
        self.enc_recurrent = slice(2 * layout.z_size, 2 * layout.z_size + 4 * layout.enc_size)


# -- one pass ---------------------------------------------------------------------------------------
class _Pass:
    """The state of one fused pass: its workspace and per-step views of it, the transposed weights,
    the kernels and read / write pieces chosen for it, and what the forward keeps for the backward.

    Buffer layout: row ``k`` of ``dec_out`` / ``enc_out`` / ``h_dec`` / ``h_enc`` is step ``k - 1``
    (row 0 holds the learned initial states, repeated over the batch). The LSTM gates of step
    ``t`` are summed, and activated, in place inside ``dec_out[t]`` (its encoder and decoder gate
    columns), and their gradients live in the same columns of ``grad_dec_out[t]``, which is also
    the gradient of the encoder's recurrent input in ``enc_out[t]``.
    """

    def __init__(self, layout: PassLayout, kernels: TorchKernels, x: torch.Tensor, weights: PassWeights) -> None:
        self.layout, self.kernels, self.x = layout, kernels, x
        self.batch = x.shape[0]
        self.spans = spans = _ColumnSpans(layout)
        self.work = work = _take_workspace(layout, self.batch, x)
        self.dec_wt, self.dec_b = _pad_columns(weights.dec_weight.t()), _pad_columns(weights.dec_bias)
        self.enc_wt, self.enc_b = weights.enc_weight.t().contiguous(), weights.enc_bias
        self.read_wt, self.z_wt = weights.read_weight.t().contiguous(), weights.z_weight.t().contiguous()
        self.write = _PatchWrite(kernels, spans.write_k) if layout.write_attention else _CanvasWrite()
        self.write_saved: list[Any] = []  # per step, what the write's backward needs
        self.opened: list[Any] = [None] * (layout.steps + 1)  # the windows of each dec_out row
        rows = work.rows
        self.zs, self.slopes = rows("z"), rows("sigmoid_slope")
        self.enc_gates, self.dec_gates = rows("dec_out", spans.enc_gates), rows("dec_out", spans.dec_gates)
        self.x_hats: list[torch.Tensor] = []  # per step x_hat [Bt, C, H, W] (the read sets it up)
        self.read = _GlimpseRead(kernels, spans.read_k) if layout.read_attention else _ImageRead()
        constant_gates = self.read.start(self)
        self.enc_bias = self.enc_b  # with the read's constant gate inputs in its recurrent part, if any
        if constant_gates is not None:
            self.enc_bias = self.enc_b.expand(self.batch, -1).clone()
            self.enc_bias[:, spans.enc_recurrent] += constant_gates
        self.constant_gates = constant_gates
        self.enc_cells, self.dec_cells = rows("enc_cell"), rows("dec_cell")
        self.enc_tanhs, self.dec_tanhs = rows("enc_tanh"), rows("dec_tanh")
        self.h_encs, self.h_decs = rows("h_enc"), rows("h_dec")
        self.enc_outs, self.dec_outs = rows("enc_out"), rows("dec_out")
        self.patches, self.enc_recurrent = rows("dec_out", spans.write), rows("enc_out", spans.enc_recurrent)
        self.mus, self.log_sigmas = rows("enc_out", spans.mu), rows("enc_out", spans.log_sigma)
        self.window_params = rows("dec_out", spans.windows)

    # -- forward ----------------------------------------------------------------------------------
    def run_forward(self, noise: torch.Tensor, weights: PassWeights) -> torch.Tensor:
        """All T steps; returns the final canvas ``[Bt, C, H, W]``."""
        work, layout = self.work, self.layout
        work["enc_cell"][0].zero_()
        work["dec_cell"][0].zero_()
        work["h_enc"][0] = weights.h_enc0
        work["h_dec"][0] = weights.h_dec0
        work["dec_out"][0] = torch.addmm(self.dec_b, weights.h_dec0.unsqueeze(0), self.dec_wt)
        work["enc_out"][0] = torch.addmm(self.enc_b, weights.h_enc0.unsqueeze(0), self.enc_wt)
        if self.constant_gates is not None:
            work["enc_out"][0, :, self.spans.enc_recurrent] += self.constant_gates
        canvas = weights.canvas0.expand(self.batch, -1, -1, -1).clone()
        self._open_row(0)
        for t in range(layout.steps):
            self._forward_step(t, canvas, noise[t])
        return canvas

    def _open_row(self, row: int) -> None:
        """The windows of ``dec_out[row]`` (the write of step ``row - 1``, the read of step ``row``)."""
        row_layout = self.spans.row_layout
        if row_layout is not None:
            params = self.window_params[row].view(self.batch, -1, WINDOW_PARAMS)
            self.opened[row] = self.kernels.open_row(params, row_layout)

    def _forward_step(self, t: int, canvas: torch.Tensor, noise: torch.Tensor) -> None:
        kernels = self.kernels
        kernels.canvas_step(canvas, self.x, self.x_hats[t], self.slopes[t])
        enc_gates = self.read.forward(self, t)
        kernels.lstm_forward(
            enc_gates,
            self.enc_recurrent[t],
            self.enc_cells[t],
            self.enc_cells[t + 1],
            self.enc_tanhs[t],
            self.h_encs[t + 1],
        )
        torch.addmm(self.enc_bias, self.h_encs[t + 1], self.enc_wt, out=self.enc_outs[t + 1])
        z = torch.addcmul(self.mus[t + 1], self.log_sigmas[t + 1].exp(), noise, out=self.zs[t])
        dec_gates = self.dec_gates[t].addmm_(z, self.z_wt)
        kernels.lstm_forward(
            dec_gates, None, self.dec_cells[t], self.dec_cells[t + 1], self.dec_tanhs[t], self.h_decs[t + 1]
        )
        torch.addmm(self.dec_b, self.h_decs[t + 1], self.dec_wt, out=self.dec_outs[t + 1])
        self._open_row(t + 1)
        self.write_saved.append(self.write.forward(self.patches[t + 1], self.opened[t + 1], canvas))

    def latent_terms(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(KL(Q || N(0, I)), log N(z; 0, I) - log Q(z))`` per image, ``[Bt]`` each, of all steps at
        once. Squared norms need no temporaries; sigma^2 goes into a reused buffer."""
        layout, enc_out = self.layout, self.work["enc_out"]
        mu, log_sigma = enc_out[1:, :, self.spans.mu], enc_out[1:, :, self.spans.log_sigma]
        square_norm = lambda tensor: torch.linalg.vector_norm(tensor, dim=(0, 2)).square()  # noqa: E731
        log_sigma_sum = log_sigma.sum(dim=(0, 2))
        variance_sum = torch.mul(log_sigma, 2, out=self.work["latent_tmp"]).exp_().sum(dim=(0, 2))
        kl = 0.5 * (square_norm(mu) + variance_sum - 2 * log_sigma_sum - layout.steps * layout.z_size)
        log_ratio = 0.5 * (square_norm(noise) - square_norm(self.work["z"])) + log_sigma_sum
        return kl, log_ratio

    # -- backward ---------------------------------------------------------------------------------
    def run_backward(
        self, grad_canvas: torch.Tensor, grad_kl: torch.Tensor | None, grad_log_ratio: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        """The gradients of the parameters (:class:`PassWeights`' order) from that of the final
        canvas (the likelihood's included: updated in place) and of the latent terms."""
        self._start_backward(grad_canvas, grad_kl, grad_log_ratio)
        for t in reversed(range(self.layout.steps)):
            self._backward_step(t)
        if self.spans.row_layout is not None:  # row 0: the read window of step 0 (its write window is unused)
            unused_write: WindowGrads = ()
            if self.layout.write_attention:
                unused_write = (
                    self.x.new_zeros(self.batch, self.layout.write_n, self.layout.width),
                    self.x.new_zeros(self.batch, self.layout.write_n, self.layout.height),
                    self.x.new_zeros(self.batch),
                )
            self._row_param_grad(0, unused_write)
        return self._parameter_grads()

    def _start_backward(
        self, grad_canvas: torch.Tensor, grad_kl: torch.Tensor | None, grad_log_ratio: torch.Tensor | None
    ) -> None:
        """Gradients that do not wait for the reverse loop: of the latent terms w.r.t. ``(mu, log
        sigma)`` of all steps (the loop adds z's), and zeros where no step writes."""
        work, spans, layout, batch = self.work, self.spans, self.layout, self.batch
        z_size = layout.z_size
        self.grad_canvas = grad_canvas
        grad_dec_out, grad_latent, enc_out = work["grad_dec_out"], work["grad_latent"], work["enc_out"]
        grad_dec_out[layout.steps, :, spans.tail].zero_()  # the last step's outputs for a step T+1
        grad_dec_out[0, :, spans.head].zero_()  # row 0 (initial state) writes nothing
        mu, log_sigma = enc_out[1:, :, spans.mu], enc_out[1:, :, spans.log_sigma]
        grad_mu_all, grad_log_sigma_all = grad_latent[1:, :, :z_size], grad_latent[1:, :, z_size:]
        grad_latent[0].zero_()
        if grad_kl is None:
            grad_latent[1:].zero_()
        else:
            torch.mul(mu, grad_kl.view(1, -1, 1), out=grad_mu_all)
            torch.mul(log_sigma, 2, out=grad_log_sigma_all).exp_().sub_(1).mul_(grad_kl.view(1, -1, 1))
        if grad_log_ratio is not None:
            grad_log_sigma_all.add_(grad_log_ratio.view(1, -1, 1))
        self.grad_log_ratio_column = None if grad_log_ratio is None else grad_log_ratio.unsqueeze(-1)
        self.sigma_noises = torch.sub(work["z"], mu, out=work["latent_tmp"]).unbind(0)  # sigma * eps
        self.grad_enc_cell = self.x.new_zeros(batch, layout.enc_size)
        self.grad_dec_cell = self.x.new_zeros(batch, layout.dec_size)
        self.enc_wt_latent, self.enc_wt_hidden = self.enc_wt[:, : 2 * z_size], self.enc_wt[:, 2 * z_size :]
        # The gradients of a row's windows are combined once both are known: the read window of
        # row t+1 (from step t+1, done first) and its write window (step t).
        self.pending_read: WindowGrads = ()
        if layout.read_attention:  # row T's read window (a step T+1) has no effect
            self.pending_read = (
                self.x.new_zeros(batch, layout.read_n, layout.width),
                self.x.new_zeros(batch, layout.read_n, layout.height),
                self.x.new_zeros(batch),
            )
        rows = work.rows
        self.grad_ds, self.grad_latents = rows("grad_dec_out"), rows("grad_latent")
        self.grad_patches = rows("grad_dec_out", spans.write)
        self.grad_window_params = rows("grad_dec_out", spans.windows)
        self.grad_enc_gates = rows("grad_dec_out", spans.enc_gates)
        self.grad_dec_gates = rows("grad_dec_out", spans.dec_gates)
        self.grad_mus, self.grad_log_sigmas = rows("grad_latent", spans.mu), rows("grad_latent", spans.log_sigma)

    def _row_param_grad(self, row: int, written: WindowGrads) -> None:
        """The gradient of ``dec_out[row]``'s window parameters, from its write window's and read
        window's gradients (empty when that attention is off)."""
        grads = [part for part in (written, self.pending_read) if part]
        out = self.grad_window_params[row].view(self.batch, -1, WINDOW_PARAMS)
        self.kernels.row_param_grad(self.opened[row], grads, out)

    def _backward_step(self, t: int) -> None:
        kernels = self.kernels
        written = self.write.backward(
            self.grad_canvas, self.patches[t + 1], self.opened[t + 1], self.write_saved[t], self.grad_patches[t + 1]
        )
        if self.spans.row_layout is not None:
            self._row_param_grad(t + 1, written)
        grad_h_dec = self.grad_ds[t + 1] @ self.dec_wt.t()
        self.grad_dec_cell = kernels.lstm_backward(
            grad_h_dec,
            self.grad_dec_cell,
            self.dec_gates[t],
            self.dec_cells[t],
            self.dec_tanhs[t],
            self.grad_dec_gates[t],
        )
        grad_z = _times_weight(self.grad_dec_gates[t], self.z_wt)
        if self.grad_log_ratio_column is not None:
            grad_z = torch.addcmul(grad_z, self.grad_log_ratio_column, self.zs[t], value=-1)
        self.grad_mus[t + 1].add_(grad_z)
        self.grad_log_sigmas[t + 1].addcmul_(grad_z, self.sigma_noises[t])
        grad_h_enc = torch.addmm(
            self.grad_enc_gates[t + 1] @ self.enc_wt_hidden.t(), self.grad_latents[t + 1], self.enc_wt_latent.t()
        )
        self.grad_enc_cell = kernels.lstm_backward(
            grad_h_enc,
            self.grad_enc_cell,
            self.enc_gates[t],
            self.enc_cells[t],
            self.enc_tanhs[t],
            self.grad_enc_gates[t],
        )
        self.pending_read = self.read.backward(self, t)

    def _parameter_grads(self) -> tuple[torch.Tensor, ...]:
        """One matrix product per layer over all steps (row 0: the initial states)."""
        work, spans, layout = self.work, self.spans, self.layout
        grad_dec_out, grad_latent = work["grad_dec_out"], work["grad_latent"]
        h_enc, h_dec = work["h_enc"].flatten(0, 1), work["h_dec"].flatten(0, 1)
        all_grad_d = grad_dec_out.flatten(0, 1)
        dec_width = sum(layout.dec_sizes)  # without the padding
        grad_dec_w = _weight_grad(all_grad_d, h_dec)[:dec_width]
        grad_dec_b = _column_sums(all_grad_d)[:dec_width]
        grad_enc_hidden = grad_dec_out[:, :, spans.enc_gates].flatten(0, 1)  # = of enc_out's recurrent part
        all_grad_latent = grad_latent.flatten(0, 1)
        grad_enc_w = torch.cat([_weight_grad(all_grad_latent, h_enc), _weight_grad(grad_enc_hidden, h_enc)], dim=0)
        grad_enc_b = torch.cat([_column_sums(all_grad_latent), _column_sums(grad_enc_hidden)])
        steps = layout.steps
        grad_read_w = self.read.weight_grad(self, grad_dec_out[:steps, :, spans.enc_gates])
        grad_z_w = _weight_grad(grad_dec_out[:steps, :, spans.dec_gates].flatten(0, 1), work["z"].flatten(0, 1))
        grad_initial_d = grad_dec_out[0].sum(dim=0)
        grad_h_dec0 = grad_initial_d @ self.dec_wt.t()
        grad_h_enc0 = grad_initial_d[spans.enc_gates] @ self.enc_wt_hidden.t()
        grad_canvas0 = self.grad_canvas.sum(dim=0)
        return (
            grad_dec_w,
            grad_dec_b,
            grad_enc_w,
            grad_enc_b,
            grad_read_w,
            grad_z_w,
            grad_canvas0,
            grad_h_enc0,
            grad_h_dec0,
        )


# -- the autograd function -------------------------------------------------------------------------
class _FusedDraw(torch.autograd.Function):
    """Inputs: ``x, noise, nll_fn, layout, kernels, *weights`` (:class:`PassWeights`' order);
    outputs: reconstruction, kl, log_ratio, canvas."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        noise: torch.Tensor,
        nll_fn: NegLogLikelihood,
        layout: PassLayout,
        kernels: TorchKernels,
        *weights: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        x, parameters = x.contiguous(), PassWeights(*weights)
        draw_pass = _Pass(layout, kernels, x, parameters)
        canvas = draw_pass.run_forward(noise, parameters)
        kl, log_ratio = draw_pass.latent_terms(noise)
        ctx.nll_fn, ctx.draw_pass = nll_fn, draw_pass
        ctx.save_for_backward(x, canvas)
        ctx.set_materialize_grads(False)
        return nll_fn(canvas, x), kl, log_ratio, canvas

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        grad_recon, grad_kl, grad_log_ratio, grad_canvas = grads
        x, canvas = ctx.saved_tensors
        draw_pass: _Pass | None = ctx.draw_pass
        if draw_pass is None:
            raise RuntimeError(
                "the fused DRAW pass can be differentiated only once; set model.fused_backward = False "
                "to backpropagate through it again (retain_graph)"
            )
        ctx.draw_pass = None
        if grad_canvas is None:
            grad_canvas_total = x.new_zeros(canvas.shape)
        else:
            grad_canvas_total = grad_canvas.clone(memory_format=torch.contiguous_format)
        if grad_recon is not None and draw_pass.layout.likelihood == "bernoulli":  # dBCE/dlogits = sigmoid(c) - x
            grad_canvas_total.addcmul_(torch.sigmoid(canvas).sub_(x), grad_recon.view(-1, 1, 1, 1))
        elif grad_recon is not None:
            with torch.enable_grad():
                leaf = canvas.detach().requires_grad_(True)
                (grad_leaf,) = torch.autograd.grad(ctx.nll_fn(leaf, x), leaf, grad_recon)
            grad_canvas_total += grad_leaf
        weight_grads = draw_pass.run_backward(grad_canvas_total, grad_kl, grad_log_ratio)
        _give_back(draw_pass.work)
        return (None, None, None, None, None, *weight_grads)


def fused_forward(draw_pass: DrawPass, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(reconstruction, kl, log_ratio, canvas_logits)`` of the network ``draw_pass`` on ``x [Bt, C,
    H, W]`` with the posterior noise ``noise [T, Bt, Z]``; differentiable, with the hand-written
    backward."""
    kernels = select_kernels(x, draw_pass.native_kernels)
    return _FusedDraw.apply(
        x, noise, draw_pass.neg_log_likelihood, draw_pass.layout, kernels, *draw_pass.weights.tensors()
    )
