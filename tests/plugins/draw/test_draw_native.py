"""DRAW's native float32 kernels compute what the PyTorch code of the fused pass computes."""

from __future__ import annotations

import pytest
import torch
from vlattn_draw import fused
from vlattn_draw import kernels as compiled_kernels
from vlattn_draw.filterbank import VARIANCE_FLOOR, WINDOW_PARAMS
from vlattn_draw.model import Draw, DrawShape

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kernels() -> compiled_kernels.DrawKernels:
    loaded = compiled_kernels.load()
    if loaded is None:
        pytest.skip("native kernels unavailable here (no C compiler or VLATTN_NATIVE=0)")
    return loaded


def _close(ours: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(ours, expected, rtol=2e-5, atol=2e-6)


def test_lstm_forward_and_backward(kernels: compiled_kernels.DrawKernels) -> None:
    torch.manual_seed(0)
    batch, size = 5, 9
    rows = 3 * torch.randn(batch, 4 * size + 7)  # gates inside a wider buffer, as in the pass
    extra = torch.randn(batch, 4 * size + 3)[:, 3:]
    cell = torch.randn(batch, size)
    expected_gates = rows[:, 2 : 2 + 4 * size] + extra
    expected = [torch.empty(batch, size) for _ in range(3)]
    fused.TorchKernels().lstm_forward(expected_gates, None, cell, *expected)
    ours = [torch.empty(batch, size) for _ in range(3)]
    kernels.lstm_forward(rows[:, 2 : 2 + 4 * size], extra, cell, *ours)
    _close(rows[:, 2 : 2 + 4 * size], expected_gates)
    for mine, theirs in zip(ours, expected, strict=True):
        _close(mine, theirs)

    grad_hidden, grad_cell = torch.randn(batch, size), torch.randn(batch, size)
    expected_grad = torch.empty(batch, 4 * size)
    expected_old = fused.TorchKernels().lstm_backward(
        grad_hidden, grad_cell.clone(), expected_gates, cell, expected[1], expected_grad
    )
    grad_rows = torch.zeros(batch, 4 * size + 5)
    ours_old = kernels.lstm_backward(grad_hidden, grad_cell, expected_gates, cell, expected[1], grad_rows[:, 5:])
    _close(grad_rows[:, 5:], expected_grad)
    _close(ours_old, expected_old)
    assert ours_old.data_ptr() == grad_cell.data_ptr()
    assert grad_rows[:, :5].eq(0).all()  # nothing written outside the gradient's columns


def test_lstm_forward_without_extra_and_extreme_inputs(kernels: compiled_kernels.DrawKernels) -> None:
    gates = torch.tensor([[-200.0, -30.0, 0.0, 30.0, 200.0, -1e-6, 1e-6, 5.0]])
    cell = torch.tensor([[1e30, -3.0]])
    expected_gates, ours = gates.clone(), [torch.empty(1, 2) for _ in range(3)]
    expected = [torch.empty(1, 2) for _ in range(3)]
    fused.TorchKernels().lstm_forward(expected_gates, None, cell, *expected)
    kernels.lstm_forward(gates, None, cell, *ours)
    _close(gates, expected_gates)
    for mine, theirs in zip(ours, expected, strict=True):
        _close(mine, theirs)
    assert all(torch.isfinite(t).all() for t in (gates, *ours))


def test_canvas_step(kernels: compiled_kernels.DrawKernels) -> None:
    torch.manual_seed(0)
    canvas, x = 4 * torch.randn(3, 2, 5, 6), (torch.rand(3, 2, 5, 6) > 0.5).float()
    images, slope = torch.full((3, 4, 5, 6), 7.0), torch.empty(3, 2, 5, 6)
    kernels.canvas_step(canvas, x, images[:, 2:], slope)
    sig = torch.sigmoid(canvas)
    _close(images[:, 2:], x - sig)
    _close(slope, sig * (1 - sig))
    assert images[:, :2].eq(7.0).all()


@pytest.mark.parametrize(("grids", "width", "height"), [((5, 2), 28, 28), ((4, 3), 12, 9), ((1,), 7, 7)])
def test_window_filterbanks_and_their_gradients(
    kernels: compiled_kernels.DrawKernels, grids: tuple[int, ...], width: int, height: int
) -> None:
    torch.manual_seed(0)
    batch, layout = 6, fused._RowLayout(grids, width, height)
    row = torch.randn(batch, WINDOW_PARAMS * len(grids) + 4)  # the parameters inside a wider dec_out row
    params = row[:, 4:].view(batch, len(grids), WINDOW_PARAMS)
    params[:, :, 2] -= 1.0  # a range of widths, narrow to wide
    expected = fused.TorchKernels().open_row(params, layout)
    ours = fused.NativeKernels(kernels).open_row(params, layout)
    for k in range(len(grids)):
        _close(ours.fx(k), expected.fx(k))
        _close(ours.fy(k), expected.fy(k))
    _close(ours.gamma, expected.gamma)

    grad_fx = [torch.randn(batch, n, width) for n in grids]
    grad_fy = [torch.randn(batch, n, height) for n in grids]
    grad_log_gamma = [torch.randn(batch) for _ in grids]
    expected_grad = torch.empty(batch, len(grids), WINDOW_PARAMS)
    ours_grad = torch.full((batch, len(grids) * WINDOW_PARAMS + 2), 9.0)
    grads = list(zip(grad_fx, grad_fy, grad_log_gamma, strict=True))
    fused.TorchKernels().row_param_grad(expected, grads, expected_grad)
    for k in range(len(grids)):
        window_out = ours_grad[:, 2:].view(batch, -1, WINDOW_PARAMS)[:, k]
        kernels.window_grad(params[:, k], ours.fx(k), ours.fy(k), grad_fx[k], grad_fy[k], grad_log_gamma[k], window_out)
    torch.testing.assert_close(ours_grad[:, 2:].view(batch, -1, WINDOW_PARAMS), expected_grad, rtol=1e-4, atol=1e-4)
    assert ours_grad[:, :2].eq(9.0).all()


def test_window_far_outside_the_image_and_tiny_width_stay_finite(kernels: compiled_kernels.DrawKernels) -> None:
    params = torch.tensor([[[40.0, -40.0, -30.0, 3.0, 0.5]]])
    layout = fused._RowLayout((3,), 10, 10)
    window = fused.NativeKernels(kernels).open_row(params, layout)
    for filters in (window.fx(0), window.fy(0)):
        assert torch.isfinite(filters).all()
        _close(filters.sum(dim=-1), torch.ones(1, 3))


CONFIGS = {
    "attention": {},
    "no-attention": {"read_attention": False, "write_attention": False},
    "read-only": {"write_attention": False},
    "write-only": {"read_attention": False},
    "one-filter-grids": {"read_n": 1, "write_n": 1},
    "rgb-non-square": {"channels": 3, "height": 9, "width": 12, "read_n": 3, "write_n": 4},
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_pass_with_native_kernels_equals_the_pytorch_pass(
    kernels: compiled_kernels.DrawKernels, overrides: dict
) -> None:
    torch.manual_seed(0)
    shape = DrawShape(steps=4, enc_size=12, dec_size=10, z_size=5, **overrides)
    model = Draw(shape)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    x = (torch.rand(6, shape.channels, shape.height, shape.width) > 0.5).float()
    noise = torch.randn(shape.steps, 6, shape.z_size)
    weights = [torch.randn(6) for _ in range(3)] + [torch.randn_like(x)]
    results = {}
    for use_native in (False, True):
        model.native_kernels = use_native
        model.zero_grad()
        out = model(x, noise=noise)
        terms = (out.reconstruction, out.kl, out.log_ratio, out.canvas_logits)
        sum((term * weight).sum() for term, weight in zip(terms, weights, strict=True)).backward()
        results[use_native] = ([t.detach() for t in terms], {n: p.grad.clone() for n, p in model.named_parameters()})
    for ours, expected in zip(results[True][0], results[False][0], strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    for name, expected in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], expected, rtol=1e-3, atol=1e-4, msg=name)


def test_float64_and_unavailable_kernels_use_the_pytorch_code(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not isinstance(fused.select_kernels(torch.zeros(1, dtype=torch.float64)), fused.NativeKernels)
    assert not isinstance(fused.select_kernels(torch.zeros(1), native=False), fused.NativeKernels)
    monkeypatch.setattr(compiled_kernels, "load", lambda: None)
    assert not isinstance(fused.select_kernels(torch.zeros(1)), fused.NativeKernels)


def test_activation_accuracy_over_the_float32_range(kernels: compiled_kernels.DrawKernels) -> None:
    """The kernels' exponential is a polynomial: sigmoid to a few units in the last place, tanh too."""
    size = 4096
    values = torch.linspace(-40.0, 40.0, size)
    gates = values.repeat(4).view(1, -1).clone()
    outputs = [torch.empty(1, size) for _ in range(3)]
    kernels.lstm_forward(gates, None, torch.zeros(1, size), *outputs)
    exact = values.double()
    sigmoid, tanh = gates[0, :size].double(), gates[0, 3 * size :].double()
    assert ((sigmoid - torch.sigmoid(exact)).abs() / torch.sigmoid(exact)).max() < 5e-7
    assert (tanh - torch.tanh(exact)).abs().max() < 5e-7


def test_the_c_kernels_agree_with_the_window_constants(kernels: compiled_kernels.DrawKernels) -> None:
    assert kernels.window_params == WINDOW_PARAMS
    assert kernels.variance_floor == torch.tensor(VARIANCE_FLOOR, dtype=torch.float32).item()
