"""The DRAW Gaussian filterbank, tested alone."""

from __future__ import annotations

import math

import pytest
import torch
from vlattn_draw.filterbank import (
    filter_means,
    filterbank,
    glimpse_from_params,
    read_glimpse,
    write_patch,
)


def params(gx: float, gy: float, log_var: float, log_stride: float, log_gamma: float = 0.0) -> torch.Tensor:
    return torch.tensor([[gx, gy, log_var, log_stride, log_gamma]], dtype=torch.float64)


def test_rows_sum_to_one_for_random_windows() -> None:
    torch.manual_seed(0)
    raw = torch.randn(64, 5, dtype=torch.float64) * 2
    glimpse = glimpse_from_params(raw, width=28, height=20, grid_size=5)
    fx, fy = filterbank(glimpse, width=28, height=20, grid_size=5)
    assert fx.shape == (64, 5, 28) and fy.shape == (64, 5, 20)
    torch.testing.assert_close(fx.sum(-1), torch.ones(64, 5, dtype=torch.float64))
    torch.testing.assert_close(fy.sum(-1), torch.ones(64, 5, dtype=torch.float64))
    assert (fx >= 0).all() and (fy >= 0).all()


@pytest.mark.parametrize(("size", "grid"), [(28, 5), (28, 2), (12, 12), (31, 4)])
def test_neutral_window_spans_first_to_last_pixel(size: int, grid: int) -> None:
    glimpse = glimpse_from_params(params(0.0, 0.0, 0.0, 0.0), size, size, grid)
    means = filter_means(glimpse.center_x, glimpse.stride, grid)[0]
    # 1-based pixel coordinates: the first and last centres are exactly pixels 1 and A.
    assert means[0].item() == pytest.approx(1.0)
    assert means[-1].item() == pytest.approx(float(size))
    assert torch.diff(means).allclose(torch.full((grid - 1,), (size - 1) / (grid - 1), dtype=torch.float64))
    box = glimpse.box(grid)[0].tolist()
    assert box == pytest.approx([0.0, 0.0, size - 1.0, size - 1.0])


def test_stride_uses_the_longer_side_of_a_non_square_image() -> None:
    glimpse = glimpse_from_params(params(0.0, 0.0, 0.0, 0.0), width=40, height=20, grid_size=3)
    assert glimpse.stride.item() == pytest.approx(39 / 2)
    assert glimpse.center_x.item() == pytest.approx(20.5)
    assert glimpse.center_y.item() == pytest.approx(10.5)


def test_filters_peak_on_their_centres() -> None:
    size = 9
    glimpse = glimpse_from_params(params(0.0, 0.0, math.log(0.3), 0.0), size, size, size)
    fx, _ = filterbank(glimpse, size, size, size)
    assert fx[0].argmax(dim=-1).tolist() == list(range(size))


@pytest.mark.parametrize("far", [1e3, -1e3, 1e6])
def test_finite_for_centres_far_outside_and_tiny_sigma(far: float) -> None:
    raw = torch.tensor([[far, -far, -40.0, 5.0, 3.0], [0.3, 0.1, -80.0, -10.0, -3.0]], requires_grad=True)
    glimpse = glimpse_from_params(raw, 28, 28, 5)
    fx, fy = filterbank(glimpse, 28, 28, 5)
    assert torch.isfinite(fx).all() and torch.isfinite(fy).all()
    torch.testing.assert_close(fx.sum(-1), torch.ones(2, 5))
    image = torch.rand(2, 3, 28, 28)
    out = read_glimpse(image, fx, fy, glimpse.intensity)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert raw.grad is not None and torch.isfinite(raw.grad).all()


def test_read_with_full_grid_and_tiny_sigma_returns_the_image() -> None:
    torch.manual_seed(1)
    size = 16
    glimpse = glimpse_from_params(params(0.0, 0.0, math.log(1e-4), 0.0), size, size, size)
    fx, fy = filterbank(glimpse, size, size, size)
    image = torch.rand(1, 3, size, size, dtype=torch.float64)
    read = read_glimpse(image, fx, fy, glimpse.intensity)
    torch.testing.assert_close(read, image)
    # and writing that patch back through the same filters redraws it
    torch.testing.assert_close(write_patch(read, fx, fy, glimpse.intensity), image)


def test_intensity_scales_read_and_divides_write() -> None:
    glimpse = glimpse_from_params(params(0.2, -0.1, 0.5, -0.3, math.log(2.0)), 28, 28, 3)
    fx, fy = filterbank(glimpse, 28, 28, 3)
    image = torch.rand(1, 1, 28, 28, dtype=torch.float64)
    plain = fy.unsqueeze(1) @ image @ fx.transpose(-1, -2).unsqueeze(1)
    torch.testing.assert_close(read_glimpse(image, fx, fy, glimpse.intensity), 2 * plain)
    patch = torch.rand(1, 1, 3, 3, dtype=torch.float64)
    plain_write = fy.transpose(-1, -2).unsqueeze(1) @ patch @ fx.unsqueeze(1)
    torch.testing.assert_close(write_patch(patch, fx, fy, glimpse.intensity), plain_write / 2)


def test_batched_read_matches_per_example_read() -> None:
    torch.manual_seed(2)
    raw = torch.randn(6, 5, dtype=torch.float64)
    images = torch.rand(6, 2, 20, 24, dtype=torch.float64)
    glimpse = glimpse_from_params(raw, width=24, height=20, grid_size=4)
    fx, fy = filterbank(glimpse, 24, 20, 4)
    batched = read_glimpse(images, fx, fy, glimpse.intensity)
    for b in range(6):
        for c in range(2):
            expected = glimpse.intensity[b] * fy[b] @ images[b, c] @ fx[b].T
            torch.testing.assert_close(batched[b, c], expected)
