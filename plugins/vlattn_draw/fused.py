"""DRAW's training pass with a hand-written backward (backpropagation through time).

:func:`fused_forward` computes exactly what :meth:`vlattn_draw.model.Draw.forward` computes (the
same per-image reconstruction, KL and log-ratio terms and the final canvas), but runs the T steps
without recording an autograd graph and differentiates them in one reverse loop of its own:

* no autograd bookkeeping for the ~100 small operations of every step (the filterbanks, the LSTM
  gates, the reparameterisation), which at the paper's sizes cost about as much as the matrix
  products themselves;
* the weight gradients of the shared layers are one large matrix product each over all T steps
  (``[T*Bt, out]^T @ [T*Bt, in]``) instead of T small ones;
* activations are kept in preallocated ``[T, Bt, ...]`` buffers and updated in place.

Only the likelihood of the final canvas goes through autograd (one operation), so every
likelihood of :class:`~vlattn_draw.model.Draw` is supported. Gradients flow to every parameter and
through every output (``reconstruction``, ``kl``, ``log_ratio`` and ``canvas_logits``); the tests
compare them with autograd's in float64.

Notation below: ``Bt`` batch, ``C`` channels, ``H x W`` image, ``N`` grid size, ``He`` / ``Hd``
encoder / decoder units, ``Z`` latent units, ``T`` steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

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
    dec_sizes: tuple[int, ...]
    enc_sizes: tuple[int, ...]


# -- filterbank pieces (forward keeps what the backward needs) ----------------------------------
def _window(params: torch.Tensor, width: int, height: int, grid: int) -> tuple[torch.Tensor, ...]:
    """``(center_x, center_y, stride, variance, gamma)`` ``[Bt]`` each from raw ``[Bt, 5]``
    (the formulas of :func:`vlattn_draw.filterbank.glimpse_from_params`)."""
    gx_raw, gy_raw, log_var, log_stride, log_gamma = params.unbind(dim=-1)
    center_x = (width + 1) / 2 * (gx_raw + 1)
    center_y = (height + 1) / 2 * (gy_raw + 1)
    stride = (max(width, height) - 1) / max(grid - 1, 1) * torch.exp(log_stride)
    return center_x, center_y, stride, torch.exp(log_var), torch.exp(log_gamma)


def _offsets(grid: int, like: torch.Tensor) -> torch.Tensor:
    """``i - N/2 - 0.5`` for ``i = 1..N``: ``[N]``."""
    return torch.arange(1, grid + 1, dtype=like.dtype, device=like.device) - grid / 2 - 0.5


def _pixels(size: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(1, size + 1, dtype=like.dtype, device=like.device)


def _filters(center: torch.Tensor, stride: torch.Tensor, variance: torch.Tensor, grid: int, size: int) -> torch.Tensor:
    """Row-normalised filters ``[Bt, N, size]`` (:func:`vlattn_draw.filterbank.filterbank_1d`)."""
    means = center.unsqueeze(-1) + _offsets(grid, center) * stride.unsqueeze(-1)
    logits = (_pixels(size, center) - means.unsqueeze(-1)).square_()
    logits.mul_((-0.5 / variance.clamp_min(1e-12)).view(-1, 1, 1))
    return torch.softmax(logits, dim=-1)


def _filters_backward(
    filters: torch.Tensor, grad: torch.Tensor, center: torch.Tensor, stride: torch.Tensor,
    variance: torch.Tensor, grid: int, size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``(center, stride, variance)`` ``[Bt]`` from ``grad`` of the filters ``[Bt, N, size]``."""
    offsets = _offsets(grid, center)
    means = center.unsqueeze(-1) + offsets * stride.unsqueeze(-1)
    grad_logits = grad - (grad * filters).sum(dim=-1, keepdim=True)
    grad_logits.mul_(filters)  # softmax backward
    diff = _pixels(size, center) - means.unsqueeze(-1)  # [Bt, N, size]
    inv_var = 1.0 / variance.clamp_min(1e-12)
    weighted = grad_logits.mul_(diff)  # dl * (a - mu)
    grad_means = weighted.sum(dim=-1) * inv_var.unsqueeze(-1)  # [Bt, N]
    grad_var = (weighted * diff).sum(dim=(1, 2)) * (0.5 * inv_var.square())
    return grad_means.sum(dim=-1), (grad_means * offsets).sum(dim=-1), grad_var


def _window_backward(
    params: torch.Tensor, window: tuple[torch.Tensor, ...], grads: tuple[torch.Tensor, ...],
    width: int, height: int, out: torch.Tensor,
) -> None:
    """Write the gradient of the raw ``[Bt, 5]`` window parameters into ``out``.

    ``grads`` = gradients of ``(center_x, center_y, stride, variance, log gamma)``.
    """
    _, _, stride, variance, _ = window
    grad_cx, grad_cy, grad_stride, grad_var, grad_log_gamma = grads
    out[:, 0] = grad_cx * ((width + 1) / 2)
    out[:, 1] = grad_cy * ((height + 1) / 2)
    out[:, 2] = grad_var * variance * (variance >= 1e-12)
    out[:, 3] = grad_stride * stride
    out[:, 4] = grad_log_gamma


# -- LSTM pieces --------------------------------------------------------------------------------
def _lstm_forward(
    gates: torch.Tensor, cell: torch.Tensor, activations: torch.Tensor, new_cell: torch.Tensor,
    tanh_cell: torch.Tensor, hidden: torch.Tensor,
) -> None:
    """One LSTM update (gate order i, f, o, g) into the given buffers.

    ``gates [Bt, 4H]`` pre-activations; ``activations`` receives ``[sigmoid(i, f, o), tanh(g)]``,
    ``new_cell`` / ``tanh_cell`` / ``hidden`` the new ``c``, ``tanh(c)`` and ``h`` (all ``[Bt, H]``).
    """
    size = cell.shape[-1]
    torch.sigmoid(gates[:, : 3 * size], out=activations[:, : 3 * size])
    torch.tanh(gates[:, 3 * size :], out=activations[:, 3 * size :])
    i, f, o, g = activations.split(size, dim=-1)
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
    # dc += dh * o * (1 - tanh(c)^2)
    grad_cell.addcmul_(grad_hidden * o, 1 - tanh_cell.square())
    torch.mul(grad_cell, g, out=grad_i)
    torch.mul(grad_cell, old_cell, out=grad_f)
    torch.mul(grad_cell, i, out=grad_g)
    sig = activations[:, : 3 * size]
    grad_gates[:, : 3 * size].mul_(sig * (1 - sig))
    grad_g.mul_(1 - g.square())
    return grad_cell * f


# -- reusable buffers ------------------------------------------------------------------------------
class _Workspace:
    """The ``[T, Bt, ...]`` buffers of one pass (forward activations and backward gradients).

    A pass at the paper's sizes needs about 450 MB of them; freshly allocated, the operating
    system's first touch of those pages costs about as much as the pass's arithmetic, so finished
    workspaces go back to a pool and later passes of the same sizes reuse them.
    """

    def __init__(self, key: tuple[Any, ...], sizes: dict[str, tuple[int, ...]], like: torch.Tensor) -> None:
        self.key = key
        self.tensors = {name: like.new_empty(size) for name, size in sizes.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


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
        "reads": (steps, batch, read),
        "enc_act": (steps, batch, 4 * enc_size), "dec_act": (steps, batch, 4 * dec_size),
        "enc_cell": (steps + 1, batch, enc_size), "dec_cell": (steps + 1, batch, dec_size),
        "enc_tanh": (steps, batch, enc_size), "dec_tanh": (steps, batch, dec_size),
        "h_enc": (steps, batch, enc_size), "h_dec": (steps, batch, dec_size),
        "enc_out": (steps, batch, sum(lay.enc_sizes)), "dec_out": (steps, batch, sum(lay.dec_sizes)),
        "z": (steps, batch, lay.z_size),
        "grad_enc_out": (steps, batch, sum(lay.enc_sizes)), "grad_dec_out": (steps, batch, sum(lay.dec_sizes)),
        "grad_enc_gates": (steps, batch, 4 * enc_size), "grad_dec_gates": (steps, batch, 4 * dec_size),
    }
    return _Workspace(key, sizes, like)


def _give_back(work: _Workspace) -> None:
    free = _POOL.setdefault(work.key, [])
    if len(free) < _POOL_DEPTH:
        free.append(work)


def release_workspaces() -> None:
    """Free the pooled buffers of finished passes (they are reused by passes of the same sizes)."""
    _POOL.clear()


# -- the autograd function -------------------------------------------------------------------------
class _FusedDraw(torch.autograd.Function):
    """Inputs: ``x, noise, nll_fn, layout, *params``; outputs: reconstruction, kl, log_ratio, canvas."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, noise: torch.Tensor, nll_fn: NegLogLikelihood, lay: _Layout,
        dec_w: torch.Tensor, dec_b: torch.Tensor, enc_w: torch.Tensor, enc_b: torch.Tensor,
        read_w: torch.Tensor, z_w: torch.Tensor, canvas0: torch.Tensor, h_enc0: torch.Tensor,
        h_dec0: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        steps, batch, channels = lay.steps, x.shape[0], lay.channels
        height, width, z_size = lay.height, lay.width, lay.z_size
        work = _take_workspace(lay, batch, h_enc0.shape[0], h_dec0.shape[0], x)
        both, reads = work["both"], work["reads"]  # [x, x_hat] read at step t; r_t
        both[:, :, :channels] = x
        enc_act, dec_act = work["enc_act"], work["dec_act"]
        enc_cell, dec_cell = work["enc_cell"], work["dec_cell"]
        enc_tanh, dec_tanh = work["enc_tanh"], work["dec_tanh"]
        h_enc, h_dec = work["h_enc"], work["h_dec"]
        enc_out, dec_out, z_all = work["enc_out"], work["dec_out"], work["z"]
        read_saved: list[tuple[torch.Tensor, ...]] = []
        write_saved: list[tuple[torch.Tensor, ...]] = []
        enc_cell[0].zero_()
        dec_cell[0].zero_()

        dec0 = torch.addmm(dec_b, h_dec0.unsqueeze(0), dec_w.t())
        _, _, read_win, enc_from_dec, dec_from_hidden = dec0.split(lay.dec_sizes, dim=-1)
        enc_from_hidden = torch.addmm(enc_b, h_enc0.unsqueeze(0), enc_w.t())[:, 2 * z_size :]
        canvas = canvas0.expand(batch, -1, -1, -1).clone()
        kl = x.new_zeros(batch)
        log_ratio = x.new_zeros(batch)
        for t in range(steps):
            x_hat = both[t, :, channels:]
            torch.sub(x, torch.sigmoid(canvas), out=x_hat)
            if lay.read_attention:
                window = _window(read_win.expand(batch, -1), width, height, lay.read_n)
                cx, cy, stride, var, gamma = window
                fx = _filters(cx, stride, var, lay.read_n, width)
                fy = _filters(cy, stride, var, lay.read_n, height)
                rows = fy.unsqueeze(1) @ both[t]  # [Bt, 2C, N, W]
                glimpse = rows @ fx.transpose(-1, -2).unsqueeze(1)
                torch.mul(glimpse.flatten(1), gamma.unsqueeze(-1), out=reads[t])
                read_saved.append((read_win.expand(batch, -1), window, fx, fy, rows))
            else:
                reads[t] = both[t].flatten(1)
            gates = torch.addmm(enc_from_dec, reads[t], read_w.t()).add_(enc_from_hidden)
            _lstm_forward(gates, enc_cell[t], enc_act[t], enc_cell[t + 1], enc_tanh[t], h_enc[t])
            torch.addmm(enc_b, h_enc[t], enc_w.t(), out=enc_out[t])
            mu, log_sigma, enc_from_hidden = enc_out[t].split(lay.enc_sizes, dim=-1)
            sigma = torch.exp(log_sigma)
            z = torch.addcmul(mu, sigma, noise[t], out=z_all[t])
            kl += 0.5 * (mu.square() + sigma.square() - 2 * log_sigma - 1).sum(dim=-1)
            log_ratio += (0.5 * (noise[t].square() - z.square()) + log_sigma).sum(dim=-1)
            gates = torch.addmm(dec_from_hidden, z, z_w.t())
            _lstm_forward(gates, dec_cell[t], dec_act[t], dec_cell[t + 1], dec_tanh[t], h_dec[t])
            torch.addmm(dec_b, h_dec[t], dec_w.t(), out=dec_out[t])
            write, write_win, read_win, enc_from_dec, dec_from_hidden = dec_out[t].split(lay.dec_sizes, dim=-1)
            if lay.write_attention:
                window = _window(write_win, width, height, lay.write_n)
                cx, cy, stride, var, gamma = window
                fx = _filters(cx, stride, var, lay.write_n, width)
                fy = _filters(cy, stride, var, lay.write_n, height)
                patch = write.view(batch, channels, lay.write_n, lay.write_n)
                cols = patch @ fx.unsqueeze(1)  # [Bt, C, N, W]
                delta = fy.transpose(-1, -2).unsqueeze(1) @ cols
                canvas.add_(delta.div_(gamma.view(-1, 1, 1, 1)))
                write_saved.append((write_win, window, fx, fy, cols))
            else:
                canvas.add_(write.view(batch, channels, height, width))

        ctx.nll_fn, ctx.lay = nll_fn, lay
        ctx.work, ctx.read_saved, ctx.write_saved = work, read_saved, write_saved
        ctx.save_for_backward(x, dec_w, enc_w, read_w, z_w, h_enc0, h_dec0, canvas)
        ctx.set_materialize_grads(False)
        return nll_fn(canvas, x), kl, log_ratio, canvas

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        grad_recon, grad_kl, grad_log_ratio, grad_canvas = grads
        x, dec_w, enc_w, read_w, z_w, h_enc0, h_dec0, canvas = ctx.saved_tensors
        work: _Workspace | None = ctx.work
        if work is None:
            raise RuntimeError(
                "the fused DRAW pass can be differentiated only once; set model.fused_backward = False "
                "to backpropagate through it again (retain_graph)"
            )
        read_saved, write_saved = ctx.read_saved, ctx.write_saved
        both, reads = work["both"], work["reads"]
        enc_act, dec_act = work["enc_act"], work["dec_act"]
        enc_cell, dec_cell = work["enc_cell"], work["dec_cell"]
        enc_tanh, dec_tanh = work["enc_tanh"], work["dec_tanh"]
        h_enc, h_dec = work["h_enc"], work["h_dec"]
        enc_out, dec_out, z_all = work["enc_out"], work["dec_out"], work["z"]
        lay: _Layout = ctx.lay
        steps, batch, channels = lay.steps, x.shape[0], lay.channels
        height, width, z_size = lay.height, lay.width, lay.z_size
        enc_size, dec_size = h_enc0.shape[0], h_dec0.shape[0]
        write_size, write_params, read_params, _, _ = lay.dec_sizes
        new = x.new_zeros

        grad_canvas_t = new(batch, channels, height, width) if grad_canvas is None else grad_canvas.clone()
        if grad_recon is not None:
            with torch.enable_grad():
                leaf = canvas.detach().requires_grad_(True)
                (grad_leaf,) = torch.autograd.grad(ctx.nll_fn(leaf, x), leaf, grad_recon)
            grad_canvas_t += grad_leaf
        grad_kl_col = None if grad_kl is None else grad_kl.unsqueeze(-1)
        grad_lr_col = None if grad_log_ratio is None else grad_log_ratio.unsqueeze(-1)

        grad_dec_out, grad_enc_out = work["grad_dec_out"], work["grad_enc_out"]
        grad_enc_gates, grad_dec_gates = work["grad_enc_gates"], work["grad_dec_gates"]
        grad_enc_cell = new(batch, enc_size)
        grad_dec_cell = new(batch, dec_size)
        tail = write_size + write_params  # dec_out = [write | write window | tail (next step's inputs)]
        grad_tail = new(batch, sum(lay.dec_sizes) - tail)
        grad_enc_hidden = new(batch, 4 * enc_size)

        for t in reversed(range(steps)):
            grad_d = grad_dec_out[t]
            grad_d[:, tail:] = grad_tail
            write = dec_out[t, :, :write_size]
            if lay.write_attention:
                params, window, fx, fy, cols = write_saved[t]
                cx, cy, stride, var, gamma = window
                grad_delta = grad_canvas_t / gamma.view(-1, 1, 1, 1)
                grad_cols = fy.unsqueeze(1) @ grad_delta  # [Bt, C, N, W]
                grad_log_gamma = -(grad_cols * cols).sum(dim=(1, 2, 3))
                grad_fy = (cols @ grad_delta.transpose(-1, -2)).sum(dim=1)  # [Bt, N, H]
                patch = write.view(batch, channels, lay.write_n, lay.write_n)
                grad_d[:, :write_size] = (grad_cols @ fx.transpose(-1, -2).unsqueeze(1)).flatten(1)
                grad_fx = (patch.transpose(-1, -2) @ grad_cols).sum(dim=1)  # [Bt, N, W]
                gcx, gs_x, gv_x = _filters_backward(fx, grad_fx, cx, stride, var, lay.write_n, width)
                gcy, gs_y, gv_y = _filters_backward(fy, grad_fy, cy, stride, var, lay.write_n, height)
                _window_backward(params, window, (gcx, gcy, gs_x + gs_y, gv_x + gv_y, grad_log_gamma),
                                 width, height, grad_d[:, write_size:tail])
            else:
                grad_d[:, :write_size] = grad_canvas_t.flatten(1)
            grad_h_dec = grad_d @ dec_w
            grad_dec_cell = _lstm_backward(
                grad_h_dec, grad_dec_cell, dec_act[t], dec_cell[t], dec_tanh[t], grad_dec_gates[t]
            )
            grad_z = grad_dec_gates[t] @ z_w
            mu, log_sigma = enc_out[t, :, :z_size], enc_out[t, :, z_size : 2 * z_size]
            z = z_all[t]
            if grad_lr_col is not None:
                grad_z = grad_z - grad_lr_col * z
            grad_e = grad_enc_out[t]
            grad_mu, grad_log_sigma = grad_e[:, :z_size], grad_e[:, z_size : 2 * z_size]
            grad_mu.copy_(grad_z)
            torch.mul(grad_z, z - mu, out=grad_log_sigma)
            if grad_kl_col is not None:
                grad_mu.addcmul_(grad_kl_col, mu)
                grad_log_sigma.addcmul_(grad_kl_col, torch.exp(2 * log_sigma) - 1)
            if grad_lr_col is not None:
                grad_log_sigma.add_(grad_lr_col)
            grad_e[:, 2 * z_size :] = grad_enc_hidden
            grad_h_enc = grad_e @ enc_w
            grad_enc_cell = _lstm_backward(
                grad_h_enc, grad_enc_cell, enc_act[t], enc_cell[t], enc_tanh[t], grad_enc_gates[t]
            )
            grad_enc_hidden = grad_enc_gates[t]
            grad_read = grad_enc_gates[t] @ read_w  # [Bt, R]
            grad_read_win = grad_tail[:, :read_params]
            if lay.read_attention:
                params, window, fx, fy, rows = read_saved[t]
                cx, cy, stride, var, gamma = window
                grad_glimpse = grad_read.view(batch, 2 * channels, lay.read_n, lay.read_n)
                grad_log_gamma = (grad_read * reads[t]).sum(dim=-1)
                grad_glimpse = grad_glimpse * gamma.view(-1, 1, 1, 1)
                grad_fx = (grad_glimpse.transpose(-1, -2) @ rows).sum(dim=1)  # [Bt, N, W]
                grad_rows = grad_glimpse @ fx.unsqueeze(1)  # [Bt, 2C, N, W]
                grad_fy = (grad_rows @ both[t].transpose(-1, -2)).sum(dim=1)  # [Bt, N, H]
                grad_x_hat = fy.transpose(-1, -2).unsqueeze(1) @ grad_rows[:, channels:]
                gcx, gs_x, gv_x = _filters_backward(fx, grad_fx, cx, stride, var, lay.read_n, width)
                gcy, gs_y, gv_y = _filters_backward(fy, grad_fy, cy, stride, var, lay.read_n, height)
                _window_backward(params, window, (gcx, gcy, gs_x + gs_y, gv_x + gv_y, grad_log_gamma),
                                 width, height, grad_read_win)
            else:
                grad_x_hat = grad_read[:, channels * height * width :].view(batch, channels, height, width)
            # x_hat = x - sigmoid(c_{t-1}): dc -= dx_hat * s (1 - s), with s = x - x_hat
            sig = x - both[t, :, channels:]
            grad_canvas_t.sub_(grad_x_hat * sig * (1 - sig))
            grad_tail[:, read_params : read_params + 4 * enc_size] = grad_enc_gates[t]
            grad_tail[:, read_params + 4 * enc_size :] = grad_dec_gates[t]

        # Parameters: one matrix product per layer over all steps, plus the initial states' rows.
        flat = lambda tensor: tensor.flatten(0, 1)  # noqa: E731
        grad_d0 = grad_tail.sum(dim=0)  # the rows of dec_out at h_dec_0 (only its tail is used)
        grad_e0 = grad_enc_hidden.sum(dim=0)
        grad_dec_w = flat(grad_dec_out).t() @ flat(h_dec)
        grad_dec_w[tail:].addr_(grad_d0, h_dec0)
        grad_dec_b = flat(grad_dec_out).sum(dim=0)
        grad_dec_b[tail:] += grad_d0
        grad_enc_w = flat(grad_enc_out).t() @ flat(h_enc)
        grad_enc_w[2 * z_size :].addr_(grad_e0, h_enc0)
        grad_enc_b = flat(grad_enc_out).sum(dim=0)
        grad_enc_b[2 * z_size :] += grad_e0
        grad_read_w = flat(grad_enc_gates).t() @ flat(reads)
        grad_z_w = flat(grad_dec_gates).t() @ flat(z_all)
        grad_h_dec0 = grad_d0 @ dec_w[tail:]
        grad_h_enc0 = grad_e0 @ enc_w[2 * z_size :]
        grad_canvas0 = grad_canvas_t.sum(dim=0)
        ctx.work = ctx.read_saved = ctx.write_saved = None
        _give_back(work)
        return (None, None, None, None, grad_dec_w, grad_dec_b, grad_enc_w, grad_enc_b, grad_read_w,
                grad_z_w, grad_canvas0, grad_h_enc0, grad_h_dec0)


def fused_forward(model: Draw, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(reconstruction, kl, log_ratio, canvas_logits)`` of ``model`` on ``x [Bt, C, H, W]`` with the
    posterior noise ``noise [T, Bt, Z]``; differentiable, with the hand-written backward."""
    s = model.shape
    lay = _Layout(
        channels=s.channels, height=s.height, width=s.width, steps=s.steps,
        read_attention=s.read_attention, write_attention=s.write_attention, read_n=s.read_n,
        write_n=s.write_n, z_size=s.z_size, dec_sizes=tuple(model.dec_sizes), enc_sizes=tuple(model.enc_sizes),
    )
    return _FusedDraw.apply(
        x, noise, model.neg_log_likelihood, lay, model.dec_out.weight, model.dec_out.bias,
        model.enc_out.weight, model.enc_out.bias, model.enc_in.weight, model.dec_in.weight,
        model.canvas0, model.h_enc0, model.h_dec0,
    )

