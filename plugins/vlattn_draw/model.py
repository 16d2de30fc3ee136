"""The DRAW network (Gregor et al. 2015): a recurrent VAE that draws on a canvas over T steps.

For ``t = 1..T`` (eq. 3-8 of the paper)::

    x_hat_t   = x - sigmoid(c_{t-1})
    r_t       = read(x, x_hat_t, h_dec_{t-1})
    h_enc_t   = LSTM_enc(h_enc_{t-1}, [r_t, h_dec_{t-1}])
    z_t       ~ Q(z_t | h_enc_t) = N(mu_t, sigma_t),  z_t = mu_t + sigma_t * eps   (reparameterised)
    h_dec_t   = LSTM_dec(h_dec_{t-1}, z_t)
    c_t       = c_{t-1} + write(h_dec_t)

Loss per image (nats): ``-log D(x | sigmoid(c_T)) + sum_t KL(Q(z_t|.) || N(0, I))`` with
``KL = 1/2 sum_j (mu^2 + sigma^2 - log sigma^2) - |z| / 2`` per step, i.e. the constant is
``- T * |z| / 2`` over the sequence. ``c_0``, ``h_enc_0`` and ``h_dec_0`` are learned biases.

Everything is batched: the only Python loop is over the T steps. For speed, all linear maps
that read ``h_dec_t`` (write patch and window, next read window, the encoder's and the decoder's
recurrent inputs) are one matrix product, and so are those that read ``h_enc_t`` (mu, log sigma,
the encoder's recurrent input); mathematically it is the paper's model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from vlattn_draw.filterbank import WINDOW_PARAMS, Glimpse, filterbank, glimpse_from_params, read_glimpse, write_patch
from vlattn_draw.fused import DrawPass, PassLayout, PassWeights, fused_forward


@dataclass(frozen=True)
class DrawShape:
    """Architecture of a DRAW network.

    Attributes:
        channels, height, width: image shape (``C x B x A``); filters are shared by channels.
        steps: T, the number of glimpses.
        read_attention / write_attention: Gaussian attention on/off; off reads the whole image
            (``[x, x_hat]``) or writes the whole canvas.
        read_n / write_n: grid size N of the read / write filterbanks.
        enc_size / dec_size: LSTM hidden units of the encoder / decoder.
        z_size: latent units per step.
        likelihood: ``"bernoulli"`` for binary pixels, ``"continuous_bernoulli"`` for
            intensities in ``[0, 1]`` (a normalised density on ``[0, 1]``).
    """

    channels: int = 1
    height: int = 28
    width: int = 28
    steps: int = 64
    read_attention: bool = True
    write_attention: bool = True
    read_n: int = 2
    write_n: int = 5
    enc_size: int = 256
    dec_size: int = 256
    z_size: int = 100
    likelihood: str = "bernoulli"

    @property
    def read_size(self) -> int:
        """Features of r_t (both x and x_hat)."""
        per_image = self.read_n**2 if self.read_attention else self.height * self.width
        return 2 * self.channels * per_image

    @property
    def write_size(self) -> int:
        """Outputs of the write layer: one patch per channel, or a whole canvas."""
        per_image = self.write_n**2 if self.write_attention else self.height * self.width
        return self.channels * per_image


@dataclass
class DrawOutput:
    """Per-image terms of one pass, all ``[Bt]`` in nats.

    Attributes:
        reconstruction: ``-log D(x | c_T)``.
        kl: ``sum_t KL(Q(z_t) || p(z_t))`` (analytic).
        log_ratio: ``sum_t log p(z_t) - log Q(z_t)`` at the sampled ``z`` (for importance weights).
        canvas_logits: ``c_T``, ``[Bt, C, H, W]``.
    """

    reconstruction: torch.Tensor
    kl: torch.Tensor
    log_ratio: torch.Tensor
    canvas_logits: torch.Tensor


@dataclass
class DrawTrace:
    """What the model did at each step, for pictures: lists of length T.

    Attributes:
        canvases: ``sigmoid(c_t)``, each ``[Bt, C, H, W]``.
        read_boxes / write_boxes: ``[Bt, 4]`` windows ``(x0, y0, x1, y1)`` in 0-based pixels
            (empty lists when that attention is off, or no read happens).
    """

    canvases: list[torch.Tensor] = field(default_factory=list)
    read_boxes: list[torch.Tensor] = field(default_factory=list)
    write_boxes: list[torch.Tensor] = field(default_factory=list)


def lstm_step(gates: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM update from pre-activations ``gates [Bt, 4H]`` (order i, f, o, g) and ``cell [Bt, H]``."""
    hidden = cell.shape[-1]
    ifo = torch.sigmoid(gates[:, : 3 * hidden])
    i, f, o = ifo.chunk(3, dim=-1)
    cell = torch.addcmul(f * cell, i, torch.tanh(gates[:, 3 * hidden :]))
    return o * torch.tanh(cell), cell


def gaussian_kl(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, 1))`` summed over the last axis: ``[Bt, Z] -> [Bt]``."""
    return 0.5 * (mu.square() + torch.exp(2 * log_sigma) - 2 * log_sigma - 1).sum(dim=-1)


class Draw(nn.Module):
    """DRAW with independently switchable read and write attention.

    Input images are ``[Bt, C, H, W]`` in ``[0, 1]`` (binary for the Bernoulli likelihood).
    """

    def __init__(self, shape: DrawShape) -> None:
        super().__init__()
        if shape.likelihood not in ("bernoulli", "continuous_bernoulli"):
            raise ValueError(f"unknown likelihood {shape.likelihood!r}")
        self.shape = shape
        self.fused_backward = True
        self.native_kernels = True  # the fused pass's native float32 kernels, where available
        self.write_params = WINDOW_PARAMS if shape.write_attention else 0
        self.read_params = WINDOW_PARAMS if shape.read_attention else 0
        # Every map from h_dec_t, as ONE matrix product: [write patch | write window | read window
        # of step t+1 | encoder gates of step t+1 | decoder gates of step t+1].
        self.dec_sizes = [shape.write_size, self.write_params, self.read_params, 4 * shape.enc_size, 4 * shape.dec_size]
        self.dec_out = nn.Linear(shape.dec_size, sum(self.dec_sizes))
        # Every map from h_enc_t: [mu_t | log sigma_t | encoder gates of step t+1].
        self.enc_sizes = [shape.z_size, shape.z_size, 4 * shape.enc_size]
        self.enc_out = nn.Linear(shape.enc_size, sum(self.enc_sizes))
        self.enc_in = nn.Linear(shape.read_size, 4 * shape.enc_size, bias=False)
        self.dec_in = nn.Linear(shape.z_size, 4 * shape.dec_size, bias=False)
        self.canvas0 = nn.Parameter(torch.zeros(shape.channels, shape.height, shape.width))
        self.h_enc0 = nn.Parameter(torch.zeros(shape.enc_size))
        self.h_dec0 = nn.Parameter(torch.zeros(shape.dec_size))
        with torch.no_grad():  # an untrained model leaves the canvas blank: NLL = |x| ln 2 on binary x
            self.dec_out.weight[: shape.write_size].zero_()
            self.dec_out.bias[: shape.write_size].zero_()
        self._init_window(shape.write_size, shape.write_n, enabled=shape.write_attention, stride_scale=1.0, write=True)
        self._init_window(
            shape.write_size + self.write_params, shape.read_n, enabled=shape.read_attention, stride_scale=0.5
        )

    def _init_window(self, start: int, grid: int, *, enabled: bool, stride_scale: float, write: bool = False) -> None:
        """Initial bias of a window: centred, grid spacing ``stride_scale`` x the full-image spacing,
        filters as wide as half the spacing (so the grid starts as a smooth cover, not dots).

        With zero biases (``delta~ = 1``, ``sigma = 1``) an ``N = 2`` read grid sits on the four
        corner pixels, which are blank in MNIST: the encoder would see nothing of ``x`` and the
        posterior collapses onto the prior. A write spreads each patch value over about
        ``stride^2`` pixels (rows of F sum to 1), so ``1 / gamma`` starts at ``stride^2`` to give
        writes unit gain. Only the initial biases change; the formulas are the paper'shape.
        """
        if not enabled:
            return
        shape = self.shape
        extent = max(shape.width, shape.height) - 1
        stride = extent / max(grid - 1, 1) * stride_scale
        sigma = max(stride / 2, 1.0) if grid > 1 else extent / 4
        with torch.no_grad():
            bias = self.dec_out.bias[start : start + WINDOW_PARAMS]
            bias[2] = 2 * math.log(sigma)  # log sigma^2
            bias[3] = math.log(stride_scale)  # log delta~
            if write:
                bias[4] = -2 * math.log(max(stride, 1.0))  # log gamma

    # -- pieces --------------------------------------------------------------------------------
    def _split_dec(self, h_dec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(write, write_window, read_window, encoder_gates, decoder_gates)`` from ``h_dec``."""
        return self.dec_out(h_dec).split(self.dec_sizes, dim=-1)

    def _read(
        self, x: torch.Tensor, x_hat: torch.Tensor, read_win: torch.Tensor
    ) -> tuple[torch.Tensor, Glimpse | None]:
        shape = self.shape
        x_and_x_hat = torch.cat([x, x_hat], dim=1)  # [Bt, 2C, H, W]
        if not shape.read_attention:
            return x_and_x_hat.flatten(1), None
        glimpse = glimpse_from_params(read_win, shape.width, shape.height, shape.read_n)
        fx, fy = filterbank(glimpse, shape.width, shape.height, shape.read_n)
        return read_glimpse(x_and_x_hat, fx, fy, glimpse.intensity).flatten(1), glimpse

    def _write(self, write: torch.Tensor, write_win: torch.Tensor) -> tuple[torch.Tensor, Glimpse | None]:
        shape = self.shape
        if not shape.write_attention:
            return write.view(-1, shape.channels, shape.height, shape.width), None
        glimpse = glimpse_from_params(write_win, shape.width, shape.height, shape.write_n)
        fx, fy = filterbank(glimpse, shape.width, shape.height, shape.write_n)
        patch = write.view(-1, shape.channels, shape.write_n, shape.write_n)
        return write_patch(patch, fx, fy, glimpse.intensity), glimpse

    def _initial_dec(self, batch: int) -> tuple[torch.Tensor, ...]:
        """``_split_dec(h_dec_0)`` for a batch (computed once, then broadcast)."""
        return tuple(part.expand(batch, -1) for part in self._split_dec(self.h_dec0.unsqueeze(0)))

    def neg_log_likelihood(self, canvas_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``-log D(x | c_T)`` per image: ``[Bt, C, H, W] -> [Bt]`` (nats)."""
        if self.shape.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(canvas_logits, x, reduction="none")
        else:
            dist = torch.distributions.ContinuousBernoulli(logits=canvas_logits, validate_args=False)
            nll = -dist.log_prob(x)
        return nll.flatten(1).sum(dim=-1)

    # -- passes --------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        trace: DrawTrace | None = None,
        steps: int | None = None,
        noise: torch.Tensor | None = None,
    ) -> DrawOutput:
        """Encode and redraw ``x [Bt, C, H, W]``; returns per-image loss terms (nats).

        If ``trace`` is given, it is filled with the canvas and windows of every step.
        ``steps`` overrides T (for pictures; the bound is the model's only at T steps).
        ``noise [steps, Bt, Z]`` fixes the posterior samples' standard normal noise (drawn when
        ``None``).

        When gradients are needed (and no ``trace`` or other ``steps`` is asked for), the pass
        runs with the hand-written backward of :mod:`vlattn_draw.fused` unless
        ``self.fused_backward`` is ``False``; both give the same values and gradients. That pass
        uses native kernels (:mod:`vlattn_draw.kernels`) for float32 on the CPU where they are
        available, unless ``self.native_kernels`` is ``False``.
        """
        shape = self.shape
        batch = x.shape[0]
        if self._use_fused(x, trace, steps):
            if noise is None:
                noise = torch.randn(shape.steps, batch, shape.z_size, dtype=x.dtype, device=x.device)
            return DrawOutput(*fused_forward(self._fused_pass(), x, noise))
        canvas = self.canvas0.expand(batch, -1, -1, -1)
        c_enc = x.new_zeros(batch, shape.enc_size)
        c_dec = x.new_zeros(batch, shape.dec_size)
        _, _, read_win, enc_from_dec, dec_from_hidden = self._initial_dec(batch)
        enc_from_hidden = self.enc_out(self.h_enc0.unsqueeze(0))[:, 2 * shape.z_size :].expand(batch, -1)
        enc_weight, dec_weight = self.enc_in.weight.t(), self.dec_in.weight.t()
        kl = x.new_zeros(batch)
        log_ratio = x.new_zeros(batch)
        for t in range(shape.steps if steps is None else steps):
            x_hat = x - torch.sigmoid(canvas)
            r, read_glimpse_t = self._read(x, x_hat, read_win)
            h_enc, c_enc = lstm_step(torch.addmm(enc_from_dec + enc_from_hidden, r, enc_weight), c_enc)
            mu, log_sigma, enc_from_hidden = self.enc_out(h_enc).split(self.enc_sizes, dim=-1)
            eps = torch.randn_like(mu) if noise is None else noise[t]
            z = mu + torch.exp(log_sigma) * eps
            kl = kl + gaussian_kl(mu, log_sigma)
            # log N(z; 0, 1) - log N(z; mu, sigma) = (eps^2 - z^2) / 2 + log sigma
            log_ratio = log_ratio + (0.5 * (eps.square() - z.square()) + log_sigma).sum(dim=-1)
            h_dec, c_dec = lstm_step(torch.addmm(dec_from_hidden, z, dec_weight), c_dec)
            write, write_win, read_win, enc_from_dec, dec_from_hidden = self._split_dec(h_dec)
            delta, write_glimpse_t = self._write(write, write_win)
            canvas = canvas + delta
            if trace is not None:
                _record(trace, canvas, read_glimpse_t, write_glimpse_t, shape)
        reconstruction = self.neg_log_likelihood(canvas, x)
        return DrawOutput(reconstruction, kl, log_ratio, canvas)

    def _fused_pass(self) -> DrawPass:
        """This network as :func:`vlattn_draw.fused.fused_forward` takes it: sizes and parameters."""
        shape = self.shape
        layout = PassLayout(
            channels=shape.channels,
            height=shape.height,
            width=shape.width,
            steps=shape.steps,
            read_attention=shape.read_attention,
            write_attention=shape.write_attention,
            read_n=shape.read_n,
            write_n=shape.write_n,
            enc_size=shape.enc_size,
            dec_size=shape.dec_size,
            z_size=shape.z_size,
            likelihood=shape.likelihood,
            dec_sizes=tuple(self.dec_sizes),
            enc_sizes=tuple(self.enc_sizes),
        )
        weights = PassWeights(
            dec_weight=self.dec_out.weight,
            dec_bias=self.dec_out.bias,
            enc_weight=self.enc_out.weight,
            enc_bias=self.enc_out.bias,
            read_weight=self.enc_in.weight,
            z_weight=self.dec_in.weight,
            canvas0=self.canvas0,
            h_enc0=self.h_enc0,
            h_dec0=self.h_dec0,
        )
        return DrawPass(layout, weights, self.neg_log_likelihood, self.native_kernels)

    def _use_fused(self, x: torch.Tensor, trace: DrawTrace | None, steps: int | None) -> bool:
        """Whether :meth:`forward` takes the hand-written backward: a plain differentiable pass
        over all T steps, outside autocast, with ``x`` as data (not itself differentiated) and no
        hooks on the layers (the fused pass does not call them)."""
        layers = (self.dec_out, self.enc_out, self.enc_in, self.dec_in)
        return (
            self.fused_backward
            and torch.is_grad_enabled()
            and not any(layer._forward_hooks or layer._forward_pre_hooks for layer in layers)
            and trace is None
            and steps in (None, self.shape.steps)
            and not x.requires_grad
            and not torch.is_autocast_enabled(x.device.type)
        )

    @torch.no_grad()
    def generate(self, num: int, steps: int | None = None, generator: torch.Generator | None = None) -> DrawTrace:
        """Sample ``num`` images from the prior, drawing for ``steps`` steps (default T)."""
        shape = self.shape
        steps = shape.steps if steps is None else steps
        device = self.h_dec0.device
        canvas = self.canvas0.expand(num, -1, -1, -1)
        c_dec = torch.zeros(num, shape.dec_size, device=device)
        dec_from_hidden = self._initial_dec(num)[-1]
        trace = DrawTrace()
        for _ in range(steps):
            z = torch.randn(num, shape.z_size, generator=generator, device=device)
            h_dec, c_dec = lstm_step(torch.addmm(dec_from_hidden, z, self.dec_in.weight.t()), c_dec)
            write, write_win, _, _, dec_from_hidden = self._split_dec(h_dec)
            delta, glimpse = self._write(write, write_win)
            canvas = canvas + delta
            _record(trace, canvas, None, glimpse, shape)
        return trace


def _record(
    trace: DrawTrace, canvas: torch.Tensor, read: Glimpse | None, write: Glimpse | None, shape: DrawShape
) -> None:
    trace.canvases.append(torch.sigmoid(canvas).detach())
    if read is not None:
        trace.read_boxes.append(read.box(shape.read_n).detach())
    if write is not None:
        trace.write_boxes.append(write.box(shape.write_n).detach())


def importance_weighted_nll(model: Draw, x: torch.Tensor, samples: int, chunk: int = 0) -> torch.Tensor:
    """The importance-weighted bound ``-log 1/K sum_k p(x, z_k) / Q(z_k | x)`` per image, ``[Bt]``.

    ``K = samples`` posterior samples per image (Burda et al. 2016); ``K = 1`` gives a one-sample
    estimate of the usual bound. ``chunk`` bounds how many copies of ``x`` go through at once
    (0 = all ``K``).
    """
    if samples < 1:
        raise ValueError("samples must be >= 1")
    chunk = samples if chunk <= 0 else min(chunk, samples)
    log_weights = []
    done = 0
    while done < samples:
        k = min(chunk, samples - done)
        repeated = x.repeat_interleave(k, dim=0)
        out = model(repeated)
        log_weights.append((out.log_ratio - out.reconstruction).view(x.shape[0], k))
        done += k
    all_weights = torch.cat(log_weights, dim=1)
    return -(torch.logsumexp(all_weights, dim=1) - math.log(samples))
