"""The native forward scores of a decoding step (``scoring.c``'s ``vl_image_scores``) against the
PyTorch code: the scores, one step of :meth:`ShowAttendTellDecoder.step_rows`, and the bundled
model's beam captions, which must not change."""

from __future__ import annotations

import pytest
import torch
from vlattn_caption import decoder as decoder_module
from vlattn_caption import inference, search
from vlattn_caption.decoder import ShowAttendTellDecoder, _sigmoid_scores
from vlattn_caption.predict import BUNDLED_MODEL, Captioner
from vlattn_caption.records import synthetic_records
from vlattn_caption.scoring import NativeScores, _load

from vlattn.data.images import image_tensor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kernels() -> NativeScores:
    loaded = _load()
    if loaded is None:
        pytest.skip("native kernels unavailable here (no C compiler or VLATTN_NATIVE=0)")
    return loaded


@pytest.fixture
def calls(kernels: NativeScores, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows scored by the native step kernel, one entry per call."""
    seen: list[int] = []
    original = NativeScores.image_scores

    def spy(self: NativeScores, query: torch.Tensor, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        seen.append(query.shape[0])
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(NativeScores, "image_scores", spy)
    return seen


def _torch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``VLATTN_NATIVE=0`` (or no compiler) leaves: the PyTorch scores in every step."""
    monkeypatch.setattr(decoder_module, "native_scores", lambda *_: None)


@pytest.mark.parametrize("width", [7, 16, 100])
def test_native_step_scores_match_pytorch(kernels: NativeScores, width: int) -> None:
    g = torch.Generator().manual_seed(width)
    locations = 11
    state = torch.randn(6, width + 9, generator=g)
    query = state[:, 4 : 4 + width]  # a column slice of the fused product, as in the step
    keys = 2 * torch.randn(4, locations, width, generator=g)
    images = torch.tensor([0, 0, 1, 1, 1, 3])  # image 2 has no live row
    v = torch.randn(width, generator=g)
    want = _sigmoid_scores(query, keys, images, v)
    got = kernels.image_scores(query, keys, images, v)
    exact = torch.einsum("nla,a->nl", torch.sigmoid(keys[images].double() + query[:, None, :].double()), v.double())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * width**0.5)
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-5 * width**0.5)
    out = torch.empty(6, locations)
    assert kernels.image_scores(query, keys, images, v, out) is out and torch.equal(out, got)


def test_native_step_matches_the_pytorch_step(calls: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    decoder = ShowAttendTellDecoder(40, 16, embed_dim=8, hidden_dim=20, dropout=0.0).eval()
    annotations = torch.randn(3, 9, 16)
    keys, rows = decoder.scoring_keys(annotations), torch.tensor([0, 1, 3, 4, 5])  # row 2 finished
    words = torch.tensor([4, 5, 6, 7, 8])
    with torch.no_grad():
        state = tuple(s.repeat_interleave(2, 0)[rows] for s in decoder.init_state(annotations))
        native = decoder.step_rows(words, state, annotations, keys, rows, 2)
        assert calls == [5]
        _torch_only(monkeypatch)
        reference = decoder.step_rows(words, state, annotations, keys, rows, 2)
    assert calls == [5]
    for got, want in zip((native[0], *native[1], native[2]), (reference[0], *reference[1], reference[2]), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_no_native_scores_for_other_dtypes(calls: list[int]) -> None:
    torch.manual_seed(0)
    decoder = ShowAttendTellDecoder(40, 16, embed_dim=8, hidden_dim=20, dropout=0.0).eval().double()
    annotations = torch.randn(2, 9, 16, dtype=torch.float64)
    keys, rows = decoder.scoring_keys(annotations), torch.arange(2)
    with torch.no_grad():
        state = decoder.init_state(annotations)
        logits, _, weights = decoder.step_rows(torch.tensor([4, 5]), state, annotations, keys, rows, 1)
    assert calls == [] and logits.dtype == weights.dtype == torch.float64


@pytest.mark.skipif(not BUNDLED_MODEL.exists(), reason="bundled caption model not trained")
def test_bundled_model_beam_captions_native_and_pytorch_are_identical(
    calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    captioner = Captioner.load("synthetic-soft")
    records = synthetic_records("test", 100, 0, 48)
    images = torch.stack([image_tensor(r.load(), captioner.image_size) for r in records])
    annotations = search._annotations(captioner.model, images)
    precisions = ["fp32", "bf16"] if inference.bf16_supported() else ["fp32"]
    native = {p: search.beam_search(captioner.model, annotations, precision=p) for p in precisions}
    assert calls, "the native step kernel did not run"
    _torch_only(monkeypatch)
    for precision in precisions:
        reference = search.beam_search(captioner.model, annotations, precision=precision)
        assert native[precision].tokens == reference.tokens, precision
        assert (native[precision].scores - reference.scores).abs().max() < 1e-4, precision
