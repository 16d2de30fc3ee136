"""The native kernels of a decoding step (``scoring.c``'s ``vl_image_scores`` and ``vl_top_words``)
against the PyTorch code: the scores, the top words, one step of
:meth:`ShowAttendTellDecoder.step_rows`, a search with every beam live, and the bundled model's
beam captions, which must not change."""

from __future__ import annotations

import pytest
import torch
from vlattn_caption import decoder as decoder_module
from vlattn_caption import inference, search
from vlattn_caption.decoder import ShowAttendTellDecoder, _sigmoid_scores
from vlattn_caption.encoder import Encoder
from vlattn_caption.model import CaptionModel
from vlattn_caption.predict import BUNDLED_MODEL, Captioner
from vlattn_caption.records import synthetic_records
from vlattn_caption.scoring import NativeScores, _load
from vlattn_caption.vocab import Vocabulary

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
    """What ``VLATTN_NATIVE=0`` (or no compiler) leaves: the PyTorch scores and top words in every step."""
    monkeypatch.setattr(decoder_module, "native_scores", lambda *_: None)
    monkeypatch.setattr(search, "native_top_words", lambda *_: None)


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


@pytest.mark.parametrize(("rows", "vocab", "count"), [(1, 7, 5), (6, 50, 5), (3, 10_000, 5), (4, 30, 1)])
def test_native_top_words_match_pytorch(
    kernels: NativeScores, monkeypatch: pytest.MonkeyPatch, rows: int, vocab: int, count: int
) -> None:
    logits = 4 * torch.randn(rows, vocab, generator=torch.Generator().manual_seed(vocab))
    logits[0, Vocabulary.pad_id] = logits[0, Vocabulary.start_id] = 1e3  # never chosen, still in the softmax
    values, words = search._best_words(logits, count, last=False)
    assert words.dtype == torch.long and values.shape == words.shape == (rows, count)
    _torch_only(monkeypatch)
    want_values, want_words = search._best_words(logits, count, last=False)
    assert torch.equal(words, want_words)
    torch.testing.assert_close(values, want_values, rtol=1e-6, atol=1e-5)


def test_native_top_words_keep_the_lower_id_of_equal_logits(kernels: NativeScores) -> None:
    logits = torch.zeros(2, 12)
    logits[0, [9, 4, 7]] = 2.0
    logits[1, [5, 11]] = torch.tensor([3.0, 3.0])
    values, words = kernels.top_words(logits, 3, (Vocabulary.pad_id, Vocabulary.start_id))
    assert words.tolist() == [[4, 7, 9], [5, 11, 2]]  # then the lowest allowed id of the zeros (<end>)
    torch.testing.assert_close(values, torch.log_softmax(logits, 1).gather(1, words))


def test_native_beam_search_with_every_hypothesis_live_matches_pytorch(
    calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    decoder = ShowAttendTellDecoder(40, 16, embed_dim=8, hidden_dim=20, dropout=0.0)
    model = CaptionModel(Encoder("small-cnn", grid=3, channels=16), decoder).eval()
    with torch.no_grad():  # <end> never likely: after the first step every beam stays live
        decoder.out.bias[Vocabulary.end_id] = -50.0
    annotations = torch.randn(3, 9, 16)
    native = search.beam_search(model, annotations, beam_size=4, max_len=8)
    assert calls[0] == 3 and calls[1:] == [12] * 8  # one live beam per image, then all of them
    _torch_only(monkeypatch)
    reference = search.beam_search(model, annotations, beam_size=4, max_len=8)
    assert native.tokens == reference.tokens and all(len(t) == 8 for t in native.tokens)
    torch.testing.assert_close(native.scores, reference.scores, rtol=1e-5, atol=1e-5)
    for got, want in zip(native.weights, reference.weights, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


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
