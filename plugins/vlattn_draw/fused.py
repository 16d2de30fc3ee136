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
  :mod:`vlattn_draw.native` where they are available, one sweep over memory each; the PyTorch code
  below computes the same (the tests compare the two).

The Bernoulli likelihood is differentiated directly; other likelihoods of the final canvas go
through autograd (one operation). Gradients flow to every parameter and through every output
(``reconstruction``, ``kl``, ``log_ratio`` and ``canvas_logits``); the tests compare them with
autograd's in float64.

Notation below: ``Bt`` batch, ``C`` channels, ``H x W`` image, ``N`` grid size, ``He`` / ``Hd``
encoder / decoder units, ``Z`` latent units, ``T`` steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

import torch

from vlattn_draw import native

if TYPE_CHECKING:
    from vlattn_draw.model import Draw

NegLogLikelihood = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Layout:
    """Sizes the reverse loop needs (static per model)."""

    channels: int
    height: int
    width: int
    steps: int
    read_attention: bool
    write_attention: bool
    read_n: int
    write_n: int
    z_size: int
    likelihood: str
    dec_sizes: tuple[int, ...]
    enc_sizes: tuple[int, ...]


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
    inv_var: torch.Tensor  # [Bt, R]  1 / max(sigma^2, 1e-12) of each row's window
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
    """Filterbanks of the raw parameters ``[Bt, K, 5]`` = ``(g~x, g~y, log sigma^2, log delta~, log gamma)``."""
    half, unit, window_of_row, offsets, _, pixels_x, pixels_y = layout.constants(params)
    centers = torch.addcmul(half, params[..., :2], half)  # [Bt, K, 2]: g = (A + 1) / 2 * (g~ + 1)
    variance, stride, gamma = params[..., 2:].exp().unbind(dim=-1)  # [Bt, K] each
    stride = stride * unit
    if len(layout.grids) == 1:  # one window: its values broadcast over the rows
        inv_var = variance.clamp_min(1e-12).reciprocal().expand(-1, len(offsets))  # [Bt, R]
        means = torch.addcmul(centers.transpose(1, 2), offsets, stride.unsqueeze(1))  # [Bt, 2, R]
    else:
        inv_var = variance.clamp_min(1e-12).reciprocal().index_select(1, window_of_row)
        means = torch.addcmul(
            centers.index_select(1, window_of_row).transpose(1, 2), offsets,
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


@dataclass
class _NativeWindows:
    """:class:`_Windows` computed by the native kernels: one ``F_X [Bt, N_k, A]``, ``F_Y [Bt, N_k, B]``
    per window, ``gamma [Bt, K]``; the backward recomputes the rest from the raw ``params [Bt, K, 5]``."""

    kernels: native.DrawKernels
    params: torch.Tensor
    fxs: list[torch.Tensor]
    fys: list[torch.Tensor]
    gamma: torch.Tensor

    def fx(self, k: int) -> torch.Tensor:
        return self.fxs[k]

    def fy(self, k: int) -> torch.Tensor:
        return self.fys[k]


def _open_windows_native(params: torch.Tensor, layout: _RowLayout, kernels: native.DrawKernels) -> _NativeWindows:
    """:func:`_open_windows` by the native kernels (``params [Bt, K, 5]``)."""
    batch = params.shape[0]
    fxs = [params.new_empty(batch, n, layout.width) for n in layout.grids]
    fys = [params.new_empty(batch, n, layout.height) for n in layout.grids]
    gamma = params.new_empty(batch, len(layout.grids))
    for k in range(len(layout.grids)):
        kernels.open_window(params[:, k], layout.width, layout.height, fxs[k], fys[k], gamma[:, k])
    return _NativeWindows(kernels, params, fxs, fys, gamma)


def _windows_param_grad(
    windows: _Windows, grad_fx: list[torch.Tensor], grad_fy: list[torch.Tensor],
    grad_log_gamma: list[torch.Tensor], out: torch.Tensor,
) -> None:
    """Write the gradient of the raw ``[Bt, K, 5]`` window parameters into ``out``, from the
    gradients of each window's ``F_X [Bt, N_k, A]``, ``F_Y [Bt, N_k, B]`` and ``log gamma [Bt]``."""
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
    var_grad = var_grad * (windows.variance >= 1e-12)
    out[..., 2:] = torch.stack([var_grad, stride_grad, torch.stack(grad_log_gamma, dim=-1)], dim=-1)


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
    grad_hidden: torch.Tensor, grad_cell: torch.Tensor, activations: torch.Tensor, old_cell: torch.Tensor,
    tanh_cell: torch.Tensor, grad_gates: torch.Tensor,
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


def _take_workspace(lay: _Layout, batch: int, enc_size: int, dec_size: int, like: torch.Tensor) -> _Workspace:
    key = (lay, batch, enc_size, dec_size, like.dtype, like.device)
    free = _POOL.get(key)
    if free:
        return free.pop()
    steps, read = lay.steps, 2 * lay.channels * (lay.read_n**2 if lay.read_attention else lay.height * lay.width)
    sizes = {
        "both": (steps, batch, 2 * lay.channels, lay.height, lay.width),
        "sig_slope": (steps, batch, lay.channels, lay.height, lay.width),
        "reads": (steps, batch, read),
        "enc_cell": (steps + 1, batch, enc_size), "dec_cell": (steps + 1, batch, dec_size),
        "enc_tanh": (steps, batch, enc_size), "dec_tanh": (steps, batch, dec_size),
        "h_enc": (steps + 1, batch, enc_size), "h_dec": (steps + 1, batch, dec_size),
        "enc_out": (steps + 1, batch, sum(lay.enc_sizes)), "dec_out": (steps + 1, batch, _padded(sum(lay.dec_sizes))),
        "z": (steps, batch, lay.z_size), "latent_tmp": (steps, batch, lay.z_size),
        "grad_latent": (steps + 1, batch, 2 * lay.z_size),
        "grad_dec_out": (steps + 1, batch, _padded(sum(lay.dec_sizes))),
    }
    work = _Workspace(key, sizes, like)
    work["grad_dec_out"][..., sum(lay.dec_sizes) :].zero_()  # padding: never written
    return work


def _give_back(work: _Workspace) -> None:
    free = _POOL.setdefault(work.key, [])
    if len(free) < _POOL_DEPTH:
        free.append(work)


def release_workspaces() -> None:
    """Free the pooled buffers of finished passes (they are reused by passes of the same sizes)."""
    _POOL.clear()


# -- the autograd function -------------------------------------------------------------------------
class _FusedDraw(torch.autograd.Function):
    """Inputs: ``x, noise, nll_fn, layout, kernels, *params`` (``kernels``: the native ones, or
    ``None``); outputs: reconstruction, kl, log_ratio, canvas.

    Buffer layout: row ``k`` of ``dec_out`` / ``enc_out`` / ``h_dec`` / ``h_enc`` is step ``k - 1``
    (row 0 holds the learned initial states, repeated over the batch). The LSTM gates of step
    ``t`` are summed, and activated, in place inside ``dec_out[t]`` (its encoder and decoder gate
    columns), and their gradients live in the same columns of ``grad_dec_out[t]``, which is also
    the gradient of the encoder's recurrent input in ``enc_out[t]``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, noise: torch.Tensor, nll_fn: NegLogLikelihood, lay: _Layout,
        kernels: native.DrawKernels | None, dec_w: torch.Tensor, dec_b: torch.Tensor, enc_w: torch.Tensor,
        enc_b: torch.Tensor, read_w: torch.Tensor, z_w: torch.Tensor, canvas0: torch.Tensor, h_enc0: torch.Tensor,
        h_dec0: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        steps, batch, channels = lay.steps, x.shape[0], lay.channels
        height, width, z_size = lay.height, lay.width, lay.z_size
        cols = _Columns(lay, h_enc0.shape[0])
        if kernels is not None:
            x = x.contiguous()
        work = _take_workspace(lay, batch, h_enc0.shape[0], h_dec0.shape[0], x)
        both, z_all, enc_cell, dec_cell = work["both"], work["z"], work["enc_cell"], work["dec_cell"]
        h_enc, h_dec, enc_out, dec_out = work["h_enc"], work["h_dec"], work["enc_out"], work["dec_out"]
        dec_wt, dec_b = _pad_columns(dec_w.t()), _pad_columns(dec_b)
        enc_wt = enc_w.t().contiguous()
        read_wt, z_wt = read_w.t().contiguous(), z_w.t().contiguous()

        both[:, :, :channels] = x
        enc_cell[0].zero_()
        dec_cell[0].zero_()
        h_enc[0] = h_enc0
        h_dec[0] = h_dec0
        dec_out[0] = torch.addmm(dec_b, h_dec0.unsqueeze(0), dec_wt)
        enc_out[0] = torch.addmm(enc_b, h_enc0.unsqueeze(0), enc_wt)
        canvas = canvas0.expand(batch, -1, -1, -1).clone()
        read_saved: list[torch.Tensor] = []  # per step: x and x_hat times F_X^T, [Bt, H, 2C*N]
        write_saved: list[torch.Tensor] = []  # per step: w F_X / gamma, [Bt, C*N, W]
        rows = work.rows
        both_t, reads_t, zs, slopes = rows("both"), rows("reads"), rows("z"), rows("sig_slope")
        x_hats = [step[:, channels:] for step in both_t]
        both_flat = [step.view(batch, -1, width) for step in both_t]  # [Bt, 2C*H, W]
        n_read = lay.read_n
        enc_cells, dec_cells = rows("enc_cell"), rows("dec_cell")
        enc_tanhs, dec_tanhs = rows("enc_tanh"), rows("dec_tanh")
        h_encs, h_decs, enc_outs, dec_outs = rows("h_enc"), rows("h_dec"), rows("enc_out"), rows("dec_out")
        enc_gates_t, dec_gates_t = rows("dec_out", cols.enc_gates), rows("dec_out", cols.dec_gates)
        writes, enc_hidden_t = rows("dec_out", cols.write), rows("enc_out", cols.enc_hidden)
        mus, log_sigmas = rows("enc_out", cols.mu), rows("enc_out", cols.log_sigma)
        # The windows of row r of dec_out (write of step r-1, read of step r) are opened together.
        row_layout, window_params = cols.row_layout, rows("dec_out", cols.windows)
        opened: list[_Windows | _NativeWindows | None] = [None] * (steps + 1)
        open_row = _open_windows if kernels is None else partial(_open_windows_native, kernels=kernels)
        if row_layout is not None:
            opened[0] = open_row(window_params[0].view(batch, -1, 5), row_layout)
        for t in range(steps):
            if kernels is not None:
                kernels.canvas_step(canvas, x, x_hats[t], slopes[t])
            else:
                sig = torch.sigmoid(canvas)
                torch.sub(x, sig, out=x_hats[t])  # x_hat
                torch.addcmul(sig, sig, sig, value=-1, out=slopes[t])  # d sigmoid / d canvas
            if lay.read_attention and kernels is not None:
                window, k = opened[t], cols.read_k
                columns = x.new_empty(batch, 2 * channels, n_read, height)
                kernels.read(both_t[t], window.fx(k), window.fy(k), window.gamma[:, k], reads_t[t], columns)
                read_saved.append(columns)
            elif lay.read_attention:
                window, k = opened[t], cols.read_k
                fx, fy, gamma = window.fx(k), window.fy(k), window.gamma[:, k]
                # All 2C channels as one product each: columns first, then rows.
                columns = torch.bmm(both_flat[t], fx.transpose(1, 2))  # [Bt, 2C*H, N]
                columns = columns.view(batch, 2 * channels, height, n_read).transpose(1, 2)
                columns = columns.reshape(batch, height, 2 * channels * n_read)  # [Bt, H, 2C*N]
                glimpse = torch.bmm(fy, columns).view(batch, n_read, 2 * channels, n_read).transpose(1, 2)
                torch.mul(glimpse, gamma.view(-1, 1, 1, 1), out=reads_t[t].view(batch, 2 * channels, n_read, -1))
                read_saved.append(columns)
            else:
                reads_t[t].copy_(both_t[t].flatten(1))
            if kernels is not None:
                enc_gates = enc_gates_t[t].addmm_(reads_t[t], read_wt)
                kernels.lstm_forward(enc_gates, enc_hidden_t[t], enc_cells[t], enc_cells[t + 1], enc_tanhs[t],
                                     h_encs[t + 1])
            else:
                enc_gates = enc_gates_t[t].add_(enc_hidden_t[t]).addmm_(reads_t[t], read_wt)
                _lstm_forward(enc_gates, enc_cells[t], enc_cells[t + 1], enc_tanhs[t], h_encs[t + 1])
            torch.addmm(enc_b, h_encs[t + 1], enc_wt, out=enc_outs[t + 1])
            z = torch.addcmul(mus[t + 1], log_sigmas[t + 1].exp(), noise[t], out=zs[t])
            dec_gates = dec_gates_t[t].addmm_(z, z_wt)
            if kernels is not None:
                kernels.lstm_forward(dec_gates, None, dec_cells[t], dec_cells[t + 1], dec_tanhs[t], h_decs[t + 1])
            else:
                _lstm_forward(dec_gates, dec_cells[t], dec_cells[t + 1], dec_tanhs[t], h_decs[t + 1])
            torch.addmm(dec_b, h_decs[t + 1], dec_wt, out=dec_outs[t + 1])
            write = writes[t + 1]
            if row_layout is not None:
                opened[t + 1] = open_row(window_params[t + 1].view(batch, -1, 5), row_layout)
            if lay.write_attention and kernels is not None:
                window, k = opened[t + 1], cols.write_k
                scaled = x.new_empty(batch, channels, lay.write_n, width)
                kernels.write(write, window.fx(k), window.fy(k), window.gamma[:, k], canvas, scaled)
                write_saved.append(scaled)
            elif lay.write_attention:
                window, k = opened[t + 1], cols.write_k
                fx, fy, gamma = window.fx(k), window.fy(k), window.gamma[:, k]
                scaled = torch.bmm(write.view(batch, -1, lay.write_n), fx).div_(gamma.view(-1, 1, 1))
                _add_rows(canvas, fy, scaled)  # canvas += F_Y^T (w F_X) / gamma
                write_saved.append(scaled)
            else:
                canvas.add_(write.view(batch, channels, height, width))

        # The latent terms of all steps at once: KL(Q || N(0, I)) and log N(z; 0, I) - log Q(z).
        # Squared norms need no temporaries; sigma^2 goes into a reused buffer.
        mu, log_sigma = enc_out[1:, :, :z_size], enc_out[1:, :, z_size : 2 * z_size]
        square_norm = lambda tensor: torch.linalg.vector_norm(tensor, dim=(0, 2)).square()  # noqa: E731
        log_sigma_sum = log_sigma.sum(dim=(0, 2))
        variance_sum = torch.mul(log_sigma, 2, out=work["latent_tmp"]).exp_().sum(dim=(0, 2))
        kl = 0.5 * (square_norm(mu) + variance_sum - 2 * log_sigma_sum - steps * z_size)
        log_ratio = 0.5 * (square_norm(noise) - square_norm(z_all)) + log_sigma_sum
        ctx.nll_fn, ctx.lay, ctx.kernels = nll_fn, lay, kernels
        ctx.work, ctx.read_saved, ctx.write_saved, ctx.opened = work, read_saved, write_saved, opened
        ctx.weights_t = (dec_wt, enc_wt, read_wt, z_wt)
        ctx.save_for_backward(x, canvas)
        ctx.set_materialize_grads(False)
        return nll_fn(canvas, x), kl, log_ratio, canvas

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        grad_recon, grad_kl, grad_log_ratio, grad_canvas = grads
        x, canvas = ctx.saved_tensors
        work: _Workspace | None = ctx.work
        if work is None:
            raise RuntimeError(
                "the fused DRAW pass can be differentiated only once; set model.fused_backward = False "
                "to backpropagate through it again (retain_graph)"
            )
        lay: _Layout = ctx.lay
        kernels: native.DrawKernels | None = ctx.kernels
        lstm_backward = _lstm_backward if kernels is None else kernels.lstm_backward
        read_saved, write_saved, opened = ctx.read_saved, ctx.write_saved, ctx.opened
        dec_wt, enc_wt, read_wt, z_wt = ctx.weights_t
        steps, batch, channels = lay.steps, x.shape[0], lay.channels
        height, width, z_size = lay.height, lay.width, lay.z_size
        enc_size = enc_wt.shape[0]
        cols = _Columns(lay, enc_size)
        reads, z_all, h_enc, h_dec = work["reads"], work["z"], work["h_enc"], work["h_dec"]
        enc_out, grad_dec_out, grad_latent = work["enc_out"], work["grad_dec_out"], work["grad_latent"]

        if grad_canvas is None:
            grad_canvas_t = x.new_zeros(canvas.shape)
        else:
            grad_canvas_t = grad_canvas.clone(memory_format=torch.contiguous_format)
        scratch = None  # room for the read and write kernels' per-image intermediates
        if kernels is not None:
            scratch = x.new_empty(max(2 * channels * height * lay.read_n, channels * lay.write_n * width))
        if grad_recon is not None and lay.likelihood == "bernoulli":  # d BCE / d logits = sigmoid(c) - x
            grad_canvas_t.addcmul_(torch.sigmoid(canvas).sub_(x), grad_recon.view(-1, 1, 1, 1))
        elif grad_recon is not None:
            with torch.enable_grad():
                leaf = canvas.detach().requires_grad_(True)
                (grad_leaf,) = torch.autograd.grad(ctx.nll_fn(leaf, x), leaf, grad_recon)
            grad_canvas_t += grad_leaf
        grad_lr_col = None if grad_log_ratio is None else grad_log_ratio.unsqueeze(-1)
        grad_dec_out[steps, :, cols.tail].zero_()  # the last step's outputs for a step T+1
        grad_dec_out[0, :, cols.head].zero_()  # row 0 (initial state) writes nothing
        # Gradients of the latent terms w.r.t. (mu, log sigma), all steps at once; the loop adds z's.
        mu, log_sigma = enc_out[1:, :, :z_size], enc_out[1:, :, z_size : 2 * z_size]
        grad_mu_all, grad_log_sigma_all = grad_latent[1:, :, :z_size], grad_latent[1:, :, z_size:]
        grad_latent[0].zero_()
        if grad_kl is None:
            grad_latent[1:].zero_()
        else:
            torch.mul(mu, grad_kl.view(1, -1, 1), out=grad_mu_all)
            torch.mul(log_sigma, 2, out=grad_log_sigma_all).exp_().sub_(1).mul_(grad_kl.view(1, -1, 1))
        if grad_log_ratio is not None:
            grad_log_sigma_all.add_(grad_log_ratio.view(1, -1, 1))
        sigma_noise = torch.sub(z_all, mu, out=work["latent_tmp"])  # sigma * eps
        grad_enc_cell = x.new_zeros(batch, enc_size)
        grad_dec_cell = x.new_zeros(batch, dec_wt.shape[0])
        enc_wt_latent, enc_wt_hidden = enc_wt[:, : 2 * z_size], enc_wt[:, 2 * z_size :]

        rows = work.rows
        both_t, reads_t, zs, slopes = rows("both"), rows("reads"), rows("z"), rows("sig_slope")
        sigma_noises = sigma_noise.unbind(0)
        writes = rows("dec_out", cols.write)
        acts_enc, acts_dec = rows("dec_out", cols.enc_gates), rows("dec_out", cols.dec_gates)
        enc_cells, dec_cells = rows("enc_cell"), rows("dec_cell")
        enc_tanhs, dec_tanhs = rows("enc_tanh"), rows("dec_tanh")
        grad_ds, grad_latents = rows("grad_dec_out"), rows("grad_latent")
        grad_writes, grad_window_params = rows("grad_dec_out", cols.write), rows("grad_dec_out", cols.windows)
        # The gradients of a row's windows are combined once both are known: the read window of
        # row t+1 (from step t+1, done first) and its write window (step t).
        row_layout = cols.row_layout
        pending_read: tuple[torch.Tensor, ...] = ()
        if lay.read_attention:  # row T's read window (a step T+1) has no effect
            pending_read = (x.new_zeros(batch, lay.read_n, width), x.new_zeros(batch, lay.read_n, height),
                            x.new_zeros(batch))
        grad_enc_gates_t, grad_dec_gates_t = rows("grad_dec_out", cols.enc_gates), rows("grad_dec_out", cols.dec_gates)
        grad_mus, grad_log_sigmas = rows("grad_latent", cols.mu), rows("grad_latent", cols.log_sigma)
        both_flat = [step.view(batch, -1, width) for step in both_t]  # [Bt, 2C*H, W]
        n_read = lay.read_n
        for t in reversed(range(steps)):
            grad_d = grad_ds[t + 1]
            if lay.write_attention and kernels is not None:
                window, k = opened[t + 1], cols.write_k
                grad_fx, grad_fy = x.new_empty(batch, lay.write_n, width), x.new_empty(batch, lay.write_n, height)
                grad_log_gamma = x.new_empty(batch)
                kernels.write_backward(
                    grad_canvas_t, writes[t + 1], window.fx(k), window.fy(k), window.gamma[:, k], write_saved[t],
                    grad_writes[t + 1], grad_fx, grad_fy, grad_log_gamma, scratch,
                )
                written = (grad_fx, grad_fy, grad_log_gamma)
            elif lay.write_attention:
                window, k, scaled = opened[t + 1], cols.write_k, write_saved[t]
                fx, fy, gamma = window.fx(k), window.fy(k), window.gamma[:, k]
                grad_scaled, grad_fy = _rows_backward(grad_canvas_t, fy, scaled)
                grad_log_gamma = -(grad_scaled * scaled).sum(dim=(1, 2))  # [Bt]
                grad_cols = grad_scaled.div_(gamma.view(-1, 1, 1))  # of w F_X, [Bt, C*N, W]
                grad_writes[t + 1].copy_(torch.bmm(grad_cols, fx.transpose(1, 2)).flatten(1))
                grad_fx = torch.bmm(writes[t + 1].view(batch, -1, lay.write_n).transpose(1, 2), grad_cols)
                written = (grad_fx, grad_fy, grad_log_gamma)
            else:
                grad_writes[t + 1].copy_(grad_canvas_t.flatten(1))
                written = ()
            if row_layout is not None:
                _windows_param_grad_of(opened[t + 1], written, pending_read, grad_window_params[t + 1])
            grad_h_dec = grad_d @ dec_wt.t()
            grad_dec_gates = grad_dec_gates_t[t]
            grad_dec_cell = lstm_backward(
                grad_h_dec, grad_dec_cell, acts_dec[t], dec_cells[t], dec_tanhs[t], grad_dec_gates
            )
            grad_z = _times_weight(grad_dec_gates, z_wt)
            if grad_lr_col is not None:
                grad_z = torch.addcmul(grad_z, grad_lr_col, zs[t], value=-1)
            grad_mus[t + 1].add_(grad_z)
            grad_log_sigmas[t + 1].addcmul_(grad_z, sigma_noises[t])
            grad_h_enc = torch.addmm(
                grad_enc_gates_t[t + 1] @ enc_wt_hidden.t(), grad_latents[t + 1], enc_wt_latent.t()
            )
            grad_enc_gates = grad_enc_gates_t[t]
            grad_enc_cell = lstm_backward(
                grad_h_enc, grad_enc_cell, acts_enc[t], enc_cells[t], enc_tanhs[t], grad_enc_gates
            )
            grad_read = _times_weight(grad_enc_gates, read_wt)  # [Bt, R]
            if lay.read_attention and kernels is not None:
                window, k = opened[t], cols.read_k
                grad_fx, grad_fy = x.new_empty(batch, n_read, width), x.new_empty(batch, n_read, height)
                grad_log_gamma = x.new_empty(batch)
                kernels.read_backward(
                    grad_read.contiguous(), reads_t[t], both_t[t], window.fx(k), window.fy(k), window.gamma[:, k],
                    read_saved[t], slopes[t], grad_canvas_t, grad_fx, grad_fy, grad_log_gamma, scratch,
                )
                pending_read = (grad_fx, grad_fy, grad_log_gamma)  # the kernel also updated grad_canvas_t
            elif lay.read_attention:
                window, k, columns = opened[t], cols.read_k, read_saved[t]
                fx, fy, gamma = window.fx(k), window.fy(k), window.gamma[:, k]
                grad_log_gamma = (grad_read * reads_t[t]).sum(dim=-1)
                grad_glimpse = grad_read.view(batch, 2 * channels, n_read, n_read) * gamma.view(-1, 1, 1, 1)
                grad_glimpse = grad_glimpse.transpose(1, 2).reshape(batch, n_read, 2 * channels * n_read)
                grad_fy = torch.bmm(grad_glimpse, columns.transpose(1, 2))  # [Bt, N, H]
                grad_columns = torch.bmm(fy.transpose(1, 2), grad_glimpse)  # [Bt, H, 2C*N]
                grad_columns = grad_columns.view(batch, height, 2 * channels, n_read).transpose(1, 2)
                grad_columns = grad_columns.reshape(batch, 2 * channels * height, n_read)  # [Bt, 2C*H, N]
                grad_fx = torch.bmm(grad_columns.transpose(1, 2), both_flat[t])  # [Bt, N, W]
                grad_x_hat = torch.bmm(grad_columns[:, channels * height :], fx)  # [Bt, C*H, W]
                grad_x_hat = grad_x_hat.view(batch, channels, height, width)
                pending_read = (grad_fx, grad_fy, grad_log_gamma)
                grad_canvas_t.addcmul_(grad_x_hat, slopes[t], value=-1)  # x_hat = x - sigmoid(c_{t-1})
            else:
                grad_x_hat = grad_read[:, channels * height * width :].view(batch, channels, height, width)
                grad_canvas_t.addcmul_(grad_x_hat, slopes[t], value=-1)

        if row_layout is not None:  # row 0: the read window of step 0 (its write window is unused)
            unused_write = ()
            if lay.write_attention:
                unused_write = (x.new_zeros(batch, lay.write_n, width), x.new_zeros(batch, lay.write_n, height),
                                x.new_zeros(batch))
            _windows_param_grad_of(opened[0], unused_write, pending_read, grad_window_params[0])

        # Parameters: one matrix product per layer over all steps (row 0: the initial states).
        flat = lambda tensor: tensor.flatten(0, 1)  # noqa: E731
        all_grad_d = flat(grad_dec_out)
        dec_width = sum(lay.dec_sizes)  # without the padding
        grad_dec_w = _weight_grad(all_grad_d, flat(h_dec))[:dec_width]
        grad_dec_b = _column_sums(all_grad_d)[:dec_width]
        grad_enc_hidden = flat(grad_dec_out[:, :, cols.enc_gates])  # = gradient of enc_out's recurrent part
        grad_enc_w = torch.cat(
            [_weight_grad(flat(grad_latent), flat(h_enc)), _weight_grad(grad_enc_hidden, flat(h_enc))], dim=0
        )
        grad_enc_b = torch.cat([_column_sums(flat(grad_latent)), _column_sums(grad_enc_hidden)])
        grad_read_w = _weight_grad(flat(grad_dec_out[:steps, :, cols.enc_gates]), flat(reads))
        grad_z_w = _weight_grad(flat(grad_dec_out[:steps, :, cols.dec_gates]), flat(z_all))
        grad_initial_d = grad_dec_out[0].sum(dim=0)
        grad_h_dec0 = grad_initial_d @ dec_wt.t()
        grad_h_enc0 = grad_initial_d[cols.enc_gates] @ enc_wt_hidden.t()
        grad_canvas0 = grad_canvas_t.sum(dim=0)
        ctx.work = ctx.read_saved = ctx.write_saved = ctx.opened = ctx.weights_t = None
        _give_back(work)
        return (None, None, None, None, None, grad_dec_w, grad_dec_b, grad_enc_w, grad_enc_b, grad_read_w,
                grad_z_w, grad_canvas0, grad_h_enc0, grad_h_dec0)


class _Columns:
    """Column slices of ``dec_out = [write | write window | read window | enc gates | dec gates | zeros]``
    and of ``enc_out = [mu | log sigma | enc gates]``."""

    def __init__(self, lay: _Layout, enc_size: int) -> None:
        write, write_params, read_params, enc_gates, dec_gates = lay.dec_sizes
        self.write = slice(0, write)
        self.head = slice(0, write + write_params)  # what step t itself uses
        start = write + write_params
        self.tail = slice(start, start + read_params + enc_gates + dec_gates)  # what step t + 1 uses
        self.enc_gates = slice(start + read_params, start + read_params + enc_gates)
        self.dec_gates = slice(start + read_params + enc_gates, start + read_params + enc_gates + dec_gates)
        self.windows = slice(write, start + read_params)  # [write window | read window]
        grids = ((lay.write_n,) if write_params else ()) + ((lay.read_n,) if read_params else ())
        self.row_layout = _RowLayout(grids, lay.width, lay.height) if grids else None
        self.write_k, self.read_k = 0, (1 if write_params else 0)
        self.mu = slice(0, lay.z_size)
        self.log_sigma = slice(lay.z_size, 2 * lay.z_size)
        self.enc_hidden = slice(2 * lay.z_size, 2 * lay.z_size + 4 * enc_size)


def _windows_param_grad_of(
    windows: _Windows | _NativeWindows, written: tuple[torch.Tensor, ...], read: tuple[torch.Tensor, ...],
    out: torch.Tensor,
) -> None:
    """:func:`_windows_param_grad` for a row from its write window's and read window's
    ``(grad F_X, grad F_Y, grad log gamma)`` (empty when that attention is off)."""
    parts = [part for part in (written, read) if part]
    out = out.view(out.shape[0], -1, 5)
    if isinstance(windows, _NativeWindows):
        for k, (grad_fx, grad_fy, grad_log_gamma) in enumerate(parts):
            windows.kernels.window_grad(
                windows.params[:, k], windows.fxs[k], windows.fys[k], grad_fx, grad_fy, grad_log_gamma.contiguous(),
                out[:, k],
            )
        return
    _windows_param_grad(windows, [p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts], out)


def _native_kernels(x: torch.Tensor) -> native.DrawKernels | None:
    """The native kernels where they apply (float32 on the CPU, kernels available), else ``None``."""
    if x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    return native.kernels()


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


def fused_forward(model: Draw, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(reconstruction, kl, log_ratio, canvas_logits)`` of ``model`` on ``x [Bt, C, H, W]`` with the
    posterior noise ``noise [T, Bt, Z]``; differentiable, with the hand-written backward."""
    s = model.shape
    lay = _Layout(
        channels=s.channels, height=s.height, width=s.width, steps=s.steps,
        read_attention=s.read_attention, write_attention=s.write_attention, read_n=s.read_n,
        write_n=s.write_n, z_size=s.z_size, likelihood=s.likelihood, dec_sizes=tuple(model.dec_sizes),
        enc_sizes=tuple(model.enc_sizes),
    )
    kernels = _native_kernels(x) if model.native_kernels else None
    return _FusedDraw.apply(
        x, noise, model.neg_log_likelihood, lay, kernels, model.dec_out.weight, model.dec_out.bias,
        model.enc_out.weight, model.enc_out.bias, model.enc_in.weight, model.dec_in.weight,
        model.canvas0, model.h_enc0, model.h_dec0,
    )

