"""DRAW's hand-written backward equals autograd's, for every configuration and output."""

from __future__ import annotations

import pytest
import torch
from vlattn_draw import fused
from vlattn_draw.model import Draw, DrawShape, DrawTrace

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"steps": 3, "enc_size": 7, "dec_size": 6, "z_size": 4}
CONFIGS = {
    "attention": {},
    "no-read-attention": {"read_attention": False},
    "no-write-attention": {"write_attention": False},
    "no-attention": {"read_attention": False, "write_attention": False},
    "rgb-non-square": {"channels": 3, "height": 9, "width": 12, "read_n": 3, "write_n": 4},
    "one-filter-grids": {"read_n": 1, "write_n": 1},
    "continuous-bernoulli": {"height": 9, "width": 12, "likelihood": "continuous_bernoulli"},
}


def _model_and_data(overrides: dict, batch: int = 5) -> tuple[Draw, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    shape = DrawShape(**{**SMALL, **overrides})
    model = Draw(shape).double()
    with torch.no_grad():  # move every parameter off its special initial value (zeros, biases)
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    x = torch.rand(batch, shape.channels, shape.height, shape.width, dtype=torch.float64)
    if shape.likelihood == "bernoulli":
        x = (x > 0.5).double()
    noise = torch.randn(shape.steps, batch, shape.z_size, dtype=torch.float64)
    return model, x, noise


def _outputs_and_grads(model: Draw, x: torch.Tensor, noise: torch.Tensor, *, fused_on: bool):
    """All four outputs, and every parameter's gradient of a loss that uses all of them."""
    torch.manual_seed(1)
    weights = [torch.randn(x.shape[0], dtype=x.dtype) for _ in range(3)] + [torch.randn_like(x)]
    model.fused_backward = fused_on
    model.zero_grad()
    out = model(x, noise=noise)
    terms = (out.reconstruction, out.kl, out.log_ratio, out.canvas_logits)
    sum((term * weight).sum() for term, weight in zip(terms, weights, strict=True)).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return [term.detach() for term in terms], grads, out


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_fused_pass_equals_autograd_outputs_and_gradients(overrides: dict) -> None:
    model, x, noise = _model_and_data(overrides)
    plain_terms, plain_grads, plain_out = _outputs_and_grads(model, x, noise, fused_on=False)
    fused_terms, fused_grads, fused_out = _outputs_and_grads(model, x, noise, fused_on=True)
    assert "Fused" not in type(plain_out.kl.grad_fn).__name__
    assert "Fused" in type(fused_out.kl.grad_fn).__name__
    for plain, ours in zip(plain_terms, fused_terms, strict=True):
        torch.testing.assert_close(ours, plain, rtol=1e-10, atol=1e-10)
    assert plain_grads.keys() == fused_grads.keys()
    for name, plain in plain_grads.items():
        assert plain.abs().max() > 0, name  # every parameter is really exercised
        torch.testing.assert_close(fused_grads[name], plain, rtol=1e-8, atol=1e-10, msg=name)


def test_fused_gradient_of_a_single_output() -> None:
    # Outputs that take no part in the loss get no gradient at all (None, not zeros, inside).
    model, x, noise = _model_and_data({})
    for fused_on in (False, True):
        model.fused_backward = fused_on
        model.zero_grad()
        model(x, noise=noise).kl.sum().backward()
        if not fused_on:
            expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    got = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-8, atol=1e-12, msg=name)


def test_reused_buffers_give_the_same_result_again() -> None:
    model, x, noise = _model_and_data({}, batch=4)
    first = _outputs_and_grads(model, x, noise, fused_on=True)[1]
    _outputs_and_grads(model, torch.ones_like(x), torch.zeros_like(noise), fused_on=True)  # other data
    again = _outputs_and_grads(model, x, noise, fused_on=True)[1]
    for name, grad in first.items():
        torch.testing.assert_close(again[name], grad, rtol=0, atol=0, msg=name)


def test_two_passes_before_backward_keep_their_own_buffers() -> None:
    model, x, noise = _model_and_data({}, batch=4)
    model.fused_backward = False
    model(x, noise=noise).reconstruction.sum().backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.fused_backward = True
    model.zero_grad()
    out_a = model(x, noise=noise)
    out_b = model(torch.ones_like(x), noise=noise)  # in flight at the same time as out_a
    out_a.reconstruction.sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-8, atol=1e-12, msg=name)
    out_b.reconstruction.sum().backward()  # its own buffers are intact too


def test_second_backward_through_a_fused_pass_is_a_clear_error() -> None:
    model, x, noise = _model_and_data({})
    out = model(x, noise=noise)
    loss = out.reconstruction.sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="fused_backward = False"):
        loss.backward()


def test_plain_pass_where_the_fused_one_does_not_apply() -> None:
    model, x, noise = _model_and_data({})
    with torch.no_grad():
        assert model(x, noise=noise).kl.grad_fn is None
    traced = model(x, trace=DrawTrace(), noise=noise)
    assert "Fused" not in type(traced.kl.grad_fn).__name__
    shorter = model(x, steps=2, noise=noise)
    assert "Fused" not in type(shorter.kl.grad_fn).__name__
    differentiable_x = model(x.clone().requires_grad_(True), noise=noise)
    assert "Fused" not in type(differentiable_x.kl.grad_fn).__name__
    handle = model.dec_out.register_forward_hook(lambda *_: None)
    assert "Fused" not in type(model(x, noise=noise).kl.grad_fn).__name__
    handle.remove()
    assert "Fused" in type(model(x, noise=noise).kl.grad_fn).__name__


def test_float32_fused_training_step_matches_autograd() -> None:
    torch.manual_seed(0)
    model = Draw(DrawShape(steps=6, enc_size=32, dec_size=32, z_size=8))
    x = (torch.rand(16, 1, 28, 28) > 0.5).float()
    noise = torch.randn(6, 16, 8)
    grads = {}
    for fused_on in (False, True):
        model.fused_backward = fused_on
        model.zero_grad()
        out = model(x, noise=noise)
        (out.reconstruction + out.kl).mean().backward()
        grads[fused_on] = {name: p.grad.clone() for name, p in model.named_parameters()}
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_release_workspaces_empties_the_pool() -> None:
    model, x, noise = _model_and_data({})
    model(x, noise=noise).kl.sum().backward()
    assert fused._POOL
    fused.release_workspaces()
    assert not fused._POOL
