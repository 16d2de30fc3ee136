"""The DRAW network: loss terms, shapes, attention switches, learning."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence
from vlattn_draw.model import Draw, DrawShape, DrawTrace, gaussian_kl, importance_weighted_nll

TINY = DrawShape(steps=4, enc_size=32, dec_size=32, z_size=8, read_n=2, write_n=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_kl_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    mu = torch.randn(7, 10, dtype=torch.float64)
    log_sigma = torch.randn(7, 10, dtype=torch.float64)
    expected = kl_divergence(Normal(mu, log_sigma.exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, log_sigma), expected)


def test_kl_of_the_prior_itself_is_zero() -> None:
    # The constant is -|z|/2 per step (-T*|z|/2 in all), so matching the prior costs nothing.
    assert gaussian_kl(torch.zeros(3, 100), torch.zeros(3, 100)).abs().max().item() == 0.0


def test_model_kl_is_the_sum_of_per_step_kls_of_the_latent_layer() -> None:
    torch.manual_seed(0)
    model = Draw(TINY)
    seen: list[torch.Tensor] = []
    model.enc_out.register_forward_hook(lambda _m, _i, out: seen.append(out[:, : 2 * TINY.z_size]))
    x = (torch.rand(5, 1, 28, 28) > 0.5).float()
    out = model(x)
    seen = seen[1:]  # the first call maps h_enc_0 (only its recurrent part is used)
    assert len(seen) == TINY.steps
    expected = sum(
        kl_divergence(Normal(mu, ls.exp()), Normal(0.0, 1.0)).sum(-1) for mu, ls in (o.chunk(2, dim=-1) for o in seen)
    )
    torch.testing.assert_close(out.kl, expected)


def test_untrained_nll_is_close_to_784_ln2_on_random_binary_images() -> None:
    torch.manual_seed(0)
    model = Draw(DrawShape(steps=8, enc_size=64, dec_size=64, z_size=10))
    x = (torch.rand(64, 1, 28, 28) > 0.5).float()
    with torch.no_grad():
        out = model(x)
    chance = 784 * math.log(2)
    assert out.reconstruction.mean().item() == pytest.approx(chance, rel=0.02)
    assert (out.reconstruction + out.kl).mean().item() == pytest.approx(chance, rel=0.05)


@pytest.mark.parametrize(("read", "write"), [(True, True), (False, True), (True, False), (False, False)])
def test_attention_switches_and_rgb_non_square_images(read: bool, write: bool) -> None:
    shape = DrawShape(
        channels=3,
        height=12,
        width=20,
        steps=3,
        read_attention=read,
        write_attention=write,
        read_n=3,
        write_n=4,
        enc_size=16,
        dec_size=16,
        z_size=4,
        likelihood="continuous_bernoulli",
    )
    model = Draw(shape)
    x = torch.rand(4, 3, 12, 20)
    trace = DrawTrace()
    out = model(x, trace=trace)
    assert out.reconstruction.shape == out.kl.shape == out.log_ratio.shape == (4,)
    assert out.canvas_logits.shape == (4, 3, 12, 20)
    assert torch.isfinite(out.reconstruction).all()
    assert len(trace.canvases) == 3 and trace.canvases[-1].shape == (4, 3, 12, 20)
    assert len(trace.read_boxes) == (3 if read else 0)
    assert len(trace.write_boxes) == (3 if write else 0)
    (out.reconstruction + out.kl).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_read_size_depends_on_attention() -> None:
    assert DrawShape(read_n=2).read_size == 8
    assert DrawShape(read_attention=False).read_size == 2 * 784
    assert DrawShape(channels=3, write_n=5).write_size == 75
    assert DrawShape(write_attention=False).write_size == 784


def test_generate_runs_any_number_of_steps() -> None:
    model = Draw(TINY).eval()
    g = torch.Generator().manual_seed(3)
    trace = model.generate(6, steps=9, generator=g)
    assert len(trace.canvases) == 9 and len(trace.write_boxes) == 9
    assert trace.canvases[0].shape == (6, 1, 28, 28)
    assert ((trace.canvases[-1] >= 0) & (trace.canvases[-1] <= 1)).all()
    again = model.generate(6, steps=9, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again.canvases[-1], trace.canvases[-1])


def test_importance_weighted_bound_is_tighter_than_the_elbo() -> None:
    torch.manual_seed(0)
    model = Draw(TINY)
    x = (torch.rand(8, 1, 28, 28) > 0.5).float()
    with torch.no_grad():
        elbo = torch.stack([(o.reconstruction + o.kl) for o in (model(x) for _ in range(20))]).mean(0)
        iw = importance_weighted_nll(model, x, samples=32, chunk=16)
    assert iw.shape == (8,)
    assert (iw <= elbo + 0.05).all()
    with pytest.raises(ValueError):
        importance_weighted_nll(model, x, samples=0)


def test_log_ratio_matches_the_densities_when_the_posterior_is_the_prior() -> None:
    model = Draw(TINY)
    with torch.no_grad():
        model.enc_out.weight[: 2 * TINY.z_size].zero_()
        model.enc_out.bias[: 2 * TINY.z_size].zero_()
    out = model((torch.rand(4, 1, 28, 28) > 0.5).float())
    # q == p: the log ratio and the KL vanish, the bound is the reconstruction alone
    torch.testing.assert_close(out.log_ratio, torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.kl, torch.zeros(4), atol=1e-6, rtol=0)


def test_tiny_model_overfits_a_small_batch() -> None:
    torch.manual_seed(0)
    # 16 structured binary images: horizontal and vertical bars at different places
    x = torch.zeros(16, 1, 28, 28)
    for i in range(8):
        x[i, 0, 3 * i : 3 * i + 4, :] = 1
        x[8 + i, 0, :, 3 * i : 3 * i + 4] = 1
    model = Draw(DrawShape(steps=4, enc_size=64, dec_size=64, z_size=8, read_n=2, write_n=5))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        out = model(x)
        start = (out.reconstruction + out.kl).mean().item()
    losses = []
    for _ in range(200):
        out = model(x)
        loss = (out.reconstruction + out.kl).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert start > 500
    assert sum(losses[-10:]) / 10 < 0.25 * start
