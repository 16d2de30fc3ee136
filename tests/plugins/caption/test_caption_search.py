"""The batched beam search against a plain reference search; the live-rows decoder step."""

from __future__ import annotations

import pytest
import torch
from vlattn_caption import search
from vlattn_caption.decoder import ShowAttendTellDecoder
from vlattn_caption.encoder import Encoder
from vlattn_caption.model import CaptionModel
from vlattn_caption.vocab import Vocabulary

V, D, L = 12, 16, 9


def _model(attention: str = "soft-spatial", seed: int = 0, end_bias: float = 0.0) -> CaptionModel:
    torch.manual_seed(seed)
    encoder = Encoder("small-cnn", grid=3, channels=D)
    decoder = ShowAttendTellDecoder(V, D, embed_dim=8, hidden_dim=20, attention=attention, dropout=0.0)
    with torch.no_grad():
        decoder.out.bias[Vocabulary.end_id] += end_bias  # captions of mixed lengths
    return CaptionModel(encoder, decoder, hard=attention == "hard-spatial").eval()


@torch.no_grad()
def _reference_beam_search(
    model: CaptionModel, annotations: torch.Tensor, k: int, max_len: int, alpha: float
) -> search.Decoded:
    """Textbook batched beam search: every hypothesis runs every step, histories are copied."""
    decoder = model.decoder
    batch = annotations.shape[0]
    flat = annotations.repeat_interleave(k, dim=0)
    h, c = decoder.init_state(flat)
    scores = torch.full((batch, k), float("-inf"))
    scores[:, 0] = 0.0
    finished = torch.zeros(batch, k, dtype=torch.bool)
    lengths = torch.zeros(batch, k, dtype=torch.long)
    prev = torch.full((batch * k,), Vocabulary.start_id)
    tokens = torch.zeros(batch, k, 0, dtype=torch.long)
    history = torch.zeros(batch, k, 0, L)
    rows = torch.arange(batch)[:, None]
    done_row = torch.full((V,), float("-inf"))
    done_row[Vocabulary.pad_id] = 0.0
    for step in range(max_len + 1):
        logits, (h, c), weights = decoder.step(prev, (h, c), flat)
        logp = search._never(torch.log_softmax(logits, -1), last=step == max_len).view(batch, k, V)
        logp = torch.where(finished[:, :, None], done_row, logp)
        candidates = scores[:, :, None] + logp
        new_len = lengths + (~finished).long()
        rank = candidates / search.length_penalty(new_len, alpha)[:, :, None]
        best = rank.view(batch, -1).topk(k, dim=1).indices
        beam, word = best // V, best % V
        scores = candidates.view(batch, -1).gather(1, best)
        source = (rows * k + beam).view(-1)
        was_finished = finished.gather(1, beam)
        h, c = h[source], c[source]
        glimpse = weights[source].view(batch, k, L) * (~was_finished)[:, :, None]
        tokens = torch.cat([tokens[rows, beam], word[:, :, None]], dim=2)
        history = torch.cat([history[rows, beam], glimpse[:, :, None]], dim=2)
        lengths = lengths.gather(1, beam) + (~was_finished).long()
        finished = was_finished | (word == Vocabulary.end_id)
        prev = word.view(-1)
    choice = (scores / search.length_penalty(lengths, alpha)).argmax(1)
    index = torch.arange(batch)
    return search._collect(tokens[index, choice], history[index, choice], scores[index, choice])


@pytest.mark.parametrize(
    ("attention", "seed", "end_bias", "k", "max_len", "alpha"),
    [
        ("soft-spatial", 0, 0.0, 5, 8, 0.0),
        ("soft-spatial", 1, 2.0, 5, 12, 0.0),
        ("soft-spatial", 2, 2.0, 3, 12, 1.5),
        ("soft-spatial", 3, 4.0, 4, 3, 0.7),
        ("soft-spatial", 4, 1.0, 1, 10, 0.0),
        ("soft-spatial", 8, 1.0, 4, 10, -0.5),
        ("hard-spatial", 5, 2.0, 5, 10, 0.0),
        ("hard-spatial", 6, 2.0, 4, 10, 1.0),
        ("additive", 7, 2.0, 3, 8, 0.0),
    ],
)
def test_beam_search_equals_the_plain_search(
    attention: str, seed: int, end_bias: float, k: int, max_len: int, alpha: float
) -> None:
    model = _model(attention, seed, end_bias)
    annotations = torch.randn(7, L, D, generator=torch.Generator().manual_seed(seed))
    fast = search.beam_search(model, annotations, beam_size=k, max_len=max_len, alpha=alpha)
    plain = _reference_beam_search(model, annotations, k, max_len, alpha)
    assert fast.tokens == plain.tokens
    torch.testing.assert_close(fast.scores, plain.scores, rtol=1e-4, atol=1e-4)
    for a, b in zip(fast.weights, plain.weights, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_only_live_hypotheses_are_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(seed=1, end_bias=3.0)
    annotations = torch.randn(6, L, D, generator=torch.Generator().manual_seed(0))
    live: list[int] = []
    step_rows = ShowAttendTellDecoder.step_rows

    def counting(self: ShowAttendTellDecoder, *args, **kwargs):  # type: ignore[no-untyped-def]
        live.append(int(args[4].numel()))
        return step_rows(self, *args, **kwargs)

    monkeypatch.setattr(ShowAttendTellDecoder, "step_rows", counting)
    decoded = search.beam_search(model, annotations, beam_size=4, max_len=15)
    assert live[0] == 6  # the identical beams of the first step run once per image
    assert max(live) <= 6 * 4
    assert sum(live) < 6 * 4 * len(live)  # finished hypotheses and settled images stop computing
    assert len(live) <= 1 + max(map(len, decoded.tokens))  # stops when every image is settled


@pytest.mark.parametrize("attention", ["soft-spatial", "hard-spatial", "additive"])
def test_step_rows_matches_step_on_the_gathered_rows(attention: str) -> None:
    model = _model(attention, seed=2)
    decoder = model.decoder
    g = torch.Generator().manual_seed(1)
    annotations = torch.randn(4, L, D, generator=g)
    rows = torch.tensor([0, 2, 3, 7, 9, 10])  # of a 4 x 3 grid
    images = rows // 3
    words = torch.randint(3, V, (6,), generator=g)
    state = (torch.randn(6, 20, generator=g), torch.randn(6, 20, generator=g))
    with torch.no_grad():
        logits, (h, c), weights = decoder.step_rows(
            words, state, annotations, decoder.scoring_keys(annotations), rows, 3
        )
        want_logits, (want_h, want_c), want_weights = decoder.step(words, state, annotations[images])
    assert (decoder.scoring_keys(annotations) is None) == (attention == "additive")
    for got, want in ((logits, want_logits), (h, want_h), (c, want_c), (weights, want_weights)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
