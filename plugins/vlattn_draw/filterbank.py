"""DRAW's Gaussian filterbank (Gregor et al. 2015, section 3.2) as pure functions.

An ``N x N`` grid of Gaussian filters is placed on an ``A x B`` image (``A`` = width,
``B`` = height) by five numbers per example, emitted by a linear layer from the decoder state:
``(g~_x, g~_y, log sigma^2, log delta~, log gamma)``. With 1-based pixel coordinates
``a = 1..A`` and ``b = 1..B``:

* centre:  ``g_x = (A + 1) / 2 * (g~_x + 1)``,  ``g_y = (B + 1) / 2 * (g~_y + 1)``
* stride:  ``delta = (max(A, B) - 1) / (N - 1) * delta~``
* means:   ``mu_x^i = g_x + (i - N/2 - 0.5) * delta`` for ``i = 1..N`` (eq. 19-20)
* filters: ``F_X[i, a] = exp(-(a - mu_x^i)^2 / (2 sigma^2)) / Z_X`` (eq. 25-26)

With ``g~ = 0`` and ``delta~ = 1`` the first and last centres fall exactly on the first and last
pixels (a common mistake, 0-based ``i`` with the same offset, shifts the grid by one stride).
The normalisation is done in log space (a softmax over pixels), so every row sums to 1 and stays
finite even for a centre far outside the image or a tiny ``sigma``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

WINDOW_PARAMS = 5
"""Raw parameters of one attention window: ``(g~_x, g~_y, log sigma^2, log delta~, log gamma)``."""

VARIANCE_FLOOR = 1e-12
"""Smallest filter variance ``sigma^2`` used (a smaller one would divide by zero); below it the
variance's gradient is zero."""


@dataclass
class Glimpse:
    """Attention parameters of one step, for a batch.

    Attributes:
        center_x, center_y: ``g_x``, ``g_y`` in 1-based pixel coordinates, shape ``[Bt]``.
        stride: ``delta`` in pixels, ``[Bt]``.
        variance: ``sigma^2`` in squared pixels, ``[Bt]``.
        intensity: ``gamma``, ``[Bt]``.
    """

    center_x: torch.Tensor
    center_y: torch.Tensor
    stride: torch.Tensor
    variance: torch.Tensor
    intensity: torch.Tensor

    def box(self, grid_size: int) -> torch.Tensor:
        """The grid's extent ``[Bt, 4]`` as ``(x0, y0, x1, y1)`` in 0-based pixel coordinates:
        the first and last filter centres (pixel ``a`` of the formulas is at ``a - 1`` here)."""
        half = (grid_size - 1) / 2 * self.stride
        return torch.stack(
            [
                self.center_x - half - 1,
                self.center_y - half - 1,
                self.center_x + half - 1,
                self.center_y + half - 1,
            ],
            dim=-1,
        )


def glimpse_from_params(params: torch.Tensor, width: int, height: int, grid_size: int) -> Glimpse:
    """Turn raw linear outputs ``[Bt, WINDOW_PARAMS]`` = ``(g~_x, g~_y, log sigma^2, log delta~, log gamma)``
    into a :class:`Glimpse` for an image ``width x height`` and an ``N x N`` grid (``N = grid_size``).
    """
    gx_raw, gy_raw, log_var, log_stride, log_gamma = params.unbind(dim=-1)
    center_x = (width + 1) / 2 * (gx_raw + 1)
    center_y = (height + 1) / 2 * (gy_raw + 1)
    stride = (max(width, height) - 1) / max(grid_size - 1, 1) * torch.exp(log_stride)
    return Glimpse(center_x, center_y, stride, torch.exp(log_var), torch.exp(log_gamma))


def filter_means(center: torch.Tensor, stride: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Filter centres ``mu^i = g + (i - N/2 - 0.5) * delta`` for ``i = 1..N``: ``[Bt] -> [Bt, N]``."""
    i = torch.arange(1, grid_size + 1, dtype=center.dtype, device=center.device)
    return center.unsqueeze(-1) + (i - grid_size / 2 - 0.5) * stride.unsqueeze(-1)


def filterbank_1d(means: torch.Tensor, variance: torch.Tensor, size: int) -> torch.Tensor:
    """Row-normalised Gaussian filters along one axis.

    Args:
        means: ``[Bt, N]`` filter centres in 1-based pixel coordinates.
        variance: ``[Bt]`` shared ``sigma^2``.
        size: number of pixels along the axis (``A`` or ``B``).

    Returns:
        ``[Bt, N, size]``; every row sums to 1.
    """
    pixels = torch.arange(1, size + 1, dtype=means.dtype, device=means.device)
    squared = (pixels - means.unsqueeze(-1)) ** 2  # [Bt, N, size]
    logits = -squared / (2 * variance.clamp_min(VARIANCE_FLOOR)).view(-1, 1, 1)
    return torch.softmax(logits, dim=-1)


def filterbank(glimpse: Glimpse, width: int, height: int, grid_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The horizontal and vertical filterbanks ``F_X [Bt, N, A]`` and ``F_Y [Bt, N, B]``."""
    fx = filterbank_1d(filter_means(glimpse.center_x, glimpse.stride, grid_size), glimpse.variance, width)
    fy = filterbank_1d(filter_means(glimpse.center_y, glimpse.stride, grid_size), glimpse.variance, height)
    return fx, fy


def read_glimpse(images: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
    """``gamma * F_Y x F_X^T`` for every channel: ``[Bt, C, B, A] -> [Bt, C, N, N]``."""
    patch = fy.unsqueeze(1) @ images @ fx.transpose(-1, -2).unsqueeze(1)
    return patch * intensity.view(-1, 1, 1, 1)


def write_patch(patch: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
    """``F_Y^T w F_X / gamma`` for every channel: ``[Bt, C, N, N] -> [Bt, C, B, A]``."""
    image = fy.transpose(-1, -2).unsqueeze(1) @ patch @ fx.unsqueeze(1)
    return image / intensity.view(-1, 1, 1, 1)
