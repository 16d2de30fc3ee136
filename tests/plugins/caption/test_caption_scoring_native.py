"""The attention scores of the hoisted pass: the PyTorch code against autograd, the native float32
kernels of ``scoring.c`` against the PyTorch code."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from vlattn_caption import scoring
from vlattn_caption.scoring import KeyGradient, NativeScores, WordScores

pytestmark = pytest.mark.usefixtures("one_thread")

COUNTS = (6, 6, 4, 3, 1)  # captions still running at each word of a length-sorted batch of 6


@pytest.fixture(scope="module")
def kernels() -> NativeScores:
    loaded = scoring._load()
    if loaded is None:
        pytest.skip("native kernels unavailable here (no C compiler or VLATTN_NATIVE=0)")
    return loaded


@pytest.fixture
def torch_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(scoring, "native_scores", lambda *_: None)
    yield


def _inputs(dtype: torch.dtype, width: int = 8, locations: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``state [B, A + 5]`` (the query is a strided slice of it, as in the pass), ``keys [B, L, A]``, ``v [A]``."""
    generator = torch.Generator().manual_seed(7)
    batch = COUNTS[0]
    state = torch.randn(batch, width + 5, generator=generator, dtype=dtype)
    keys = 2 * torch.randn(batch, locations, width, generator=generator, dtype=dtype)
    v = torch.randn(width, generator=generator, dtype=dtype)
    return state, keys, v


def _pass(state: torch.Tensor, keys: torch.Tensor, v: torch.Tensor, reference: bool = False) -> torch.Tensor:
    """A weighted sum of every word's scores, the words' queries ``state[:n, 2 : 2 + A]``."""
    accumulator, total = KeyGradient(), state.new_zeros(())
    width = keys.shape[2]
    for t, n in enumerate(COUNTS):
        query = state[:n, 2 : 2 + width]
        if reference:
            scores = torch.matmul(torch.sigmoid(keys[:n] + query[:, None, :]), v)
        else:
            scores = WordScores.apply(query, keys, v, accumulator, t == 0, t == len(COUNTS) - 1)
        weights = torch.linspace(-1, 1, scores.numel(), dtype=state.dtype).view_as(scores) * (t + 1)
        total = total + (scores * weights).sum()
    return total


def _gradients(
    inputs: tuple[torch.Tensor, ...], reference: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    loss = _pass(*leaves, reference=reference)
    loss.backward()
    return loss.detach(), [x.grad for x in leaves]


@pytest.mark.usefixtures("torch_only")
def test_torch_code_matches_autograd_and_gradcheck() -> None:
    inputs = _inputs(torch.float64)
    loss, grads = _gradients(inputs)
    expected_loss, expected = _gradients(inputs, reference=True)
    torch.testing.assert_close(loss, expected_loss)
    for ours, theirs in zip(grads, expected, strict=True):
        torch.testing.assert_close(ours, theirs)
    leaves = tuple(x.detach().clone().requires_grad_() for x in inputs)
    assert torch.autograd.gradcheck(_pass, leaves)


def test_native_matches_torch_code(kernels: NativeScores, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _inputs(torch.float32, width=37, locations=11)  # a width with a vector remainder
    with monkeypatch.context() as patch:
        patch.setattr(scoring, "native_scores", lambda *_: None)
        expected_loss, expected = _gradients(inputs)
    for keep in (True, False):
        monkeypatch.setattr(scoring, "KEEP_HIDDEN", keep)
        loss, grads = _gradients(inputs)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
        for ours, theirs in zip(grads, expected, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_native_is_chosen_for_float32_cpu_only(kernels: NativeScores) -> None:
    state, keys, v = _inputs(torch.float32)
    query = state[:, 2:10]
    assert scoring.native_scores(query, keys, v) is kernels
    assert scoring.native_scores(query.double(), keys.double(), v.double()) is None
    assert scoring.native_scores(query.bfloat16(), keys, v) is None
    assert scoring.native_scores(query, keys.transpose(1, 2).contiguous().transpose(1, 2), v) is None
    assert scoring.native_scores(state.t().contiguous().t()[:, 2:10], keys, v) is None  # columns not contiguous


def test_kernel_without_keys_gradient(kernels: NativeScores) -> None:
    state, keys, v = _inputs(torch.float32)
    query = state[:4, 2:10]
    grad = torch.randn(4, keys.shape[1])
    leaves = [query.detach().clone().requires_grad_(), v.clone().requires_grad_()]
    torch.matmul(torch.sigmoid(keys[:4] + leaves[0][:, None, :]), leaves[1]).backward(grad)
    grad_query, grad_v = kernels.backward(query, keys, None, v, grad, None, 0)
    torch.testing.assert_close(grad_query, leaves[0].grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_v, leaves[1].grad, rtol=1e-5, atol=1e-6)


def test_sigmoid_error_bound(kernels: NativeScores) -> None:
    """The kernels' sigmoid (scores of width 1 with ``v = 1``) against the exact value: under 1e-7
    absolute everywhere and 3e-7 relative where it is at least ``sigmoid(-87)``, as ``scoring.c`` says."""
    x = torch.linspace(-120.0, 120.0, 480_001)
    ours = kernels.scores(torch.zeros(1, 1), x.view(1, -1, 1).contiguous(), torch.ones(1)).view(-1).double()
    exact = torch.sigmoid(x.double())
    error = (ours - exact).abs()
    assert error.max().item() < 1e-7
    assert (error / exact)[x >= -87].max().item() < 3e-7
