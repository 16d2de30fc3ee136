"""Caption decoding: greedy, sampling, and a beam search batched across images and beams.

Every function takes the model and a batch of images ``[B, 3, S, S]`` (or precomputed
annotations ``[B, L, D]``) and returns :class:`Decoded`: for each image the word ids (without
``<start>``/``<end>``), the sequence log-probability and the attention weights ``[n_words, L]``
of the chosen words. Each takes a ``precision`` for the decoder's weight products: ``fp32`` (the
default) or ``bf16`` (bfloat16 weights and inputs, float32 results; CPUs with AMX or AVX-512 BF16
and CUDA devices, see :mod:`vlattn_caption.inference`). The beam search keeps all ``B * K``
hypotheses in one tensor, so one decoder step serves every image: there is no per-image Python
loop. Each step runs the decoder on the live hypotheses only (finished ones are frozen, and an
image is settled as soon as no live hypothesis can beat its best finished one), projects the
annotations once per image, and keeps back-pointers instead of copying every hypothesis' history.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from vlattn.attention.spatial import HardSpatialAttention, check_eval_mode
from vlattn_caption.inference import Precision, check_precision, inference_weights
from vlattn_caption.model import CaptionModel
from vlattn_caption.scoring import native_top_words
from vlattn_caption.vocab import Vocabulary


@dataclass
class Decoded:
    """Decoded captions of a batch.

    Attributes:
        tokens: per image, the word ids (no ``<start>``, no ``<end>``).
        scores: ``[B]`` summed log-probabilities (including ``<end>`` when it was produced).
        weights: per image, ``[n_words, L]`` attention weights of the chosen words.
    """

    tokens: list[list[int]]
    scores: Tensor
    weights: list[Tensor]


#: Images encoded per call on CPU. Their channels-last activations stay in cache (100 bundled-model
#: scenes: 0.07 s in chunks of 25 against 0.15 s in one channels-first call).
ENCODE_CHUNK = 25


def _annotations(model: CaptionModel, inputs: Tensor) -> Tensor:
    """Annotations ``[B, L, D]`` of images ``[B, 3, S, S]`` (annotations pass through).

    On CPU the images go through the encoder in channels-last layout (the fast layout of CPU
    convolutions and pooling), ``ENCODE_CHUNK`` at a time.
    """
    if inputs.dim() == 3:
        return inputs
    if inputs.device.type != "cpu":
        return model.encode(inputs)
    return torch.cat(
        [
            model.encode(inputs[i : i + ENCODE_CHUNK].contiguous(memory_format=torch.channels_last))
            for i in range(0, inputs.shape[0], ENCODE_CHUNK)
        ]
    )


def _never(logits: Tensor, last: bool = False) -> Tensor:
    """Forbid ``<pad>`` and ``<start>`` as generated words; at the ``last`` step allow only ``<end>``."""
    logits = logits.float().clone()
    if last:
        end = logits[:, Vocabulary.end_id].clone()
        logits.fill_(float("-inf"))
        logits[:, Vocabulary.end_id] = end
    else:
        logits[:, [Vocabulary.pad_id, Vocabulary.start_id]] = float("-inf")
    return logits


def length_penalty(lengths: Tensor, alpha: float) -> Tensor:
    """GNMT length penalty ``((5 + len) / 6) ** alpha`` (1 when ``alpha`` is 0)."""
    return ((5.0 + lengths.to(torch.float32)) / 6.0) ** alpha


#: Most images whose beams are decoded in one tensor by :func:`beam_search` (bounds the memory of
#: the ``chunk * K * L`` attention scores; 100 bundled-model scenes at beam 5 decode about as fast
#: in chunks of 50 as in one tensor, and 20% slower in chunks of 25).
BEAM_CHUNK = 50


@torch.no_grad()
def beam_search(
    model: CaptionModel,
    inputs: Tensor,
    beam_size: int = 5,
    max_len: int = 20,
    alpha: float = 0.0,
    chunk: int = BEAM_CHUNK,
    precision: Precision = "fp32",
) -> Decoded:
    """Beam search over a whole batch at once (in chunks of ``chunk`` images).

    Args:
        model: the captioning model (put it in eval mode first).
        inputs: images ``[B, 3, S, S]`` or annotations ``[B, L, D]``.
        beam_size: ``K`` hypotheses kept per image.
        max_len: most words per caption (``<end>`` not counted).
        alpha: length penalty exponent; hypotheses are ranked by ``log p / lp(len)``.
        chunk: images decoded together in one tensor of ``chunk * K`` hypotheses.
        precision: the decoder's weight products, ``fp32`` or ``bf16`` (a one-line
            ``VlattnError`` where bf16 cannot run fast).
    """
    precision = check_precision(precision, inputs.device)
    annotations = _annotations(model, inputs)
    if annotations.shape[0] > chunk > 0:
        parts = [
            _beam_search(model, annotations[i : i + chunk], beam_size, max_len, alpha, precision)
            for i in range(0, annotations.shape[0], chunk)
        ]
        return Decoded(
            tokens=[t for p in parts for t in p.tokens],
            scores=torch.cat([p.scores for p in parts]),
            weights=[w for p in parts for w in p.weights],
        )
    return _beam_search(model, annotations, beam_size, max_len, alpha, precision)


def _best_words(logits: Tensor, count: int, last: bool) -> tuple[Tensor, Tensor]:
    """Each row's ``count`` most likely allowed words: logits ``[N, V]`` -> log-probabilities and
    word ids, each ``[N, count]`` (``<pad>``/``<start>`` never; at the ``last`` step only ``<end>``,
    the other columns ``-inf``). Float32 CPU logits take the one-pass native kernel
    (:meth:`~vlattn_caption.scoring.NativeScores.top_words`, the same result up to float rounding)
    except at the ``last`` step."""
    native = None if last else native_top_words(logits, count)
    if native is not None:
        return native.top_words(logits, count, (Vocabulary.pad_id, Vocabulary.start_id))
    logp = torch.log_softmax(logits.float(), dim=-1)
    if last:
        values = torch.full((logp.shape[0], count), float("-inf"), device=logp.device)
        values[:, 0] = logp[:, Vocabulary.end_id]
        return values, torch.full_like(values, Vocabulary.end_id, dtype=torch.long)
    logp[:, Vocabulary.pad_id] = float("-inf")
    logp[:, Vocabulary.start_id] = float("-inf")
    values, words = logp.topk(min(count, logp.shape[1]), dim=1)
    if values.shape[1] < count:  # a vocabulary smaller than the beam
        values = torch.cat([values, values.new_full((values.shape[0], count - values.shape[1]), float("-inf"))], 1)
        words = torch.cat([words, words.new_full((words.shape[0], count - words.shape[1]), Vocabulary.pad_id)], 1)
    return values, words


def _beam_search(
    model: CaptionModel, annotations: Tensor, beam_size: int, max_len: int, alpha: float, precision: Precision
) -> Decoded:
    """The search of :func:`beam_search` over one chunk of images ``[B, L, D]``.

    The ``K`` best continuations of an image are among the ``K`` best words of each of its
    hypotheses (a hypothesis' rank is its score plus a word's log-probability, over a length
    penalty that does not depend on the word), so each step ranks ``K * K`` candidates per image,
    never ``K * V``; a finished hypothesis offers one candidate, itself unchanged (``<pad>``).
    """
    decoder = model.decoder
    batch, locations = annotations.shape[0], annotations.shape[1]
    k = beam_size
    annotations = annotations.contiguous()
    device = annotations.device
    keys = decoder.scoring_keys(annotations)  # 2 U a once per image, [B, L, H'] (None: not an MLP scorer)
    fast = keys is not None and not decoder.training
    fused = inference_weights(decoder, precision) if fast else None  # once per decode, not per step
    h, c = (s.repeat_interleave(k, dim=0) for s in decoder.init_state(annotations))  # [B*K, H], image-major
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    finished = torch.zeros(batch, k, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, k, dtype=torch.long, device=device)
    prev = torch.full((batch * k,), Vocabulary.start_id, dtype=torch.long, device=device)
    parents: list[Tensor] = []  # per step [B, K]: the beam each hypothesis extends
    words: list[Tensor] = []  # per step [B, K]: its new word
    glimpses: list[Tensor] = []  # per step [B, K, L]: the attention weights of that word
    offsets = (torch.arange(batch, device=device) * k)[:, None]
    longest = length_penalty(torch.tensor(max_len + 1, device=device), alpha) if alpha else None
    for step in range(max_len + 1):
        # only live hypotheses (not finished, finite score) run the decoder; the rest are frozen
        rows = (~finished & (scores > float("-inf"))).view(-1).nonzero().squeeze(1)
        everyone = rows.shape[0] == batch * k  # no hypothesis finished or dead: no gathers, no scatters
        live_state = (h, c) if everyone else (h[rows], c[rows])
        logits, (h_live, c_live), weights_live = decoder.step_rows(
            prev if everyone else prev[rows], live_state, annotations, keys, rows, k, precision, fused
        )
        if everyone:
            h, c, weights = h_live, c_live, weights_live
        else:
            weights = annotations.new_zeros(batch * k, locations)
            h[rows], c[rows], weights[rows] = h_live, c_live, weights_live
        best_logp, best_word = _best_words(logits, k, last=step == max_len)  # [N, K] each
        if everyone:
            candidates, candidate_words = best_logp.add_(scores.view(-1, 1)), best_word  # [B*K, K]
        else:
            candidates = torch.full((batch * k, k), float("-inf"), device=device)  # [B*K, K] per hypothesis
            candidates[:, 0] = torch.where(finished, scores, float("-inf")).view(-1)
            candidates[rows] = scores.view(-1)[rows, None] + best_logp
            candidate_words = torch.full((batch * k, k), Vocabulary.pad_id, dtype=torch.long, device=device)
            candidate_words[rows] = best_word
        new_len = lengths + (~finished).long() if alpha else lengths
        rank = candidates / length_penalty(new_len, alpha).view(-1, 1) if alpha else candidates
        _, best = rank.view(batch, k * k).topk(k, dim=1)
        beam = torch.div(best, k, rounding_mode="floor")
        word = candidate_words.view(batch, k * k).gather(1, best)
        scores = candidates.view(batch, k * k).gather(1, best)
        source = (offsets + beam).view(-1)
        h, c = h[source], c[source]
        if everyone:  # nothing was finished: every hypothesis grew by its word
            step_weights = weights[source].view(batch, k, locations)
            lengths = lengths.gather(1, beam).add_(1)
            finished = word == Vocabulary.end_id
        else:
            was_finished = finished.gather(1, beam)
            step_weights = weights[source].view(batch, k, locations) * (~was_finished)[:, :, None]
            lengths = lengths.gather(1, beam) + (~was_finished).long()
            finished = was_finished | (word == Vocabulary.end_id)
        parents.append(beam)
        words.append(word)
        glimpses.append(step_weights)
        prev = word.view(-1)
        finished = _settle(finished, scores, lengths, alpha, longest)
        if bool(finished.all()):
            break
    final = scores / length_penalty(lengths, alpha) if alpha else scores
    choice = final.argmax(dim=1)
    rows = torch.arange(batch, device=device)
    chosen_score = scores[rows, choice]
    tokens, history = [], []
    for beam, word, step_weights in zip(reversed(parents), reversed(words), reversed(glimpses), strict=True):
        tokens.append(word[rows, choice])
        history.append(step_weights[rows, choice])
        choice = beam[rows, choice]
    return _collect(torch.stack(tokens[::-1], 1), torch.stack(history[::-1], 1), chosen_score)


def _settle(finished: Tensor, scores: Tensor, lengths: Tensor, alpha: float, longest: Tensor | None) -> Tensor:
    """``finished [B, K]`` with every hypothesis of a settled image marked finished.

    An image is settled once a finished hypothesis ranks strictly above anything a live one can
    still reach (log-probabilities only fall as words are added; the length penalty is at most
    ``lp(max_len + 1)`` (``longest``) when ``alpha >= 0``): its result can no longer change, so its
    live beams are frozen. A shrinking penalty (``alpha < 0``) gives no such bound.
    """
    if alpha < 0:
        return finished
    done_rank = scores / length_penalty(lengths, alpha) if alpha else scores
    live_bound = scores / longest if longest is not None else scores
    best_done = torch.where(finished, done_rank, float("-inf")).amax(dim=1)
    best_live = torch.where(finished, float("-inf"), live_bound).amax(dim=1)
    return finished | (best_done > best_live)[:, None]


@torch.no_grad()
def greedy(model: CaptionModel, inputs: Tensor, max_len: int = 20, precision: Precision = "fp32") -> Decoded:
    """Most likely word at each step, for the whole batch at once."""
    return _step_decode(model, inputs, max_len, 0.0, None, check_precision(precision, inputs.device))


@torch.no_grad()
def sample(
    model: CaptionModel,
    inputs: Tensor,
    max_len: int = 20,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    precision: Precision = "fp32",
) -> Decoded:
    """Words drawn from ``softmax(logits / temperature)`` at each step."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use greedy for argmax decoding)")
    return _step_decode(model, inputs, max_len, temperature, generator, check_precision(precision, inputs.device))


def _step_decode(
    model: CaptionModel,
    inputs: Tensor,
    max_len: int,
    temperature: float,
    generator: torch.Generator | None = None,
    precision: Precision = "fp32",
) -> Decoded:
    decoder = model.decoder
    annotations = _annotations(model, inputs).contiguous()
    batch = annotations.shape[0]
    h, c = decoder.init_state(annotations)
    prev = torch.full((batch,), Vocabulary.start_id, dtype=torch.long, device=annotations.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=annotations.device)
    scores = annotations.new_zeros(batch)
    words, weights_seq = [], []
    scoring = decoder.scoring_keys(annotations)  # the live-rows step when the mechanism has one
    keys = decoder.project_keys(annotations) if scoring is None else None
    rows = torch.arange(batch, device=annotations.device)
    fused = inference_weights(decoder, precision) if scoring is not None and not decoder.training else None
    for step in range(max_len + 1):
        if scoring is not None:
            logits, (h, c), weights = decoder.step_rows(prev, (h, c), annotations, scoring, rows, 1, precision, fused)
        else:
            logits, (h, c), weights = decoder.step(prev, (h, c), annotations, keys, precision=precision)
        logp = _never(torch.log_softmax(logits.float(), dim=-1), last=step == max_len)
        if temperature == 0.0:
            word = logp.argmax(dim=-1)
        else:
            probs = torch.softmax(logp / temperature, dim=-1)
            word = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        word = torch.where(finished, Vocabulary.pad_id, word)
        scores = scores + torch.where(finished, 0.0, logp.gather(1, word[:, None]).squeeze(1))
        words.append(word)
        weights_seq.append(weights * (~finished)[:, None])
        finished = finished | (word == Vocabulary.end_id)
        prev = word
        if bool(finished.all()):
            break
    return _collect(torch.stack(words, 1), torch.stack(weights_seq, 1), scores)


def _collect(tokens: Tensor, weights: Tensor, scores: Tensor) -> Decoded:
    """Cut each row at its ``<end>``: tokens ``[B, T]``, weights ``[B, T, L]``."""
    ids, maps = [], []
    for row in range(tokens.shape[0]):
        seq = tokens[row].tolist()
        n = seq.index(Vocabulary.end_id) if Vocabulary.end_id in seq else len(seq)
        ids.append([i for i in seq[:n] if i != Vocabulary.pad_id])
        maps.append(weights[row, :n].cpu())
    return Decoded(tokens=ids, scores=scores.cpu(), weights=maps)


def decode(
    model: CaptionModel,
    inputs: Tensor,
    *,
    beam_size: int = 5,
    max_len: int = 20,
    alpha: float = 0.0,
    hard_decoding: str | None = None,
    precision: Precision = "fp32",
) -> Decoded:
    """Beam search when ``beam_size > 1``, else greedy.

    ``hard_decoding`` (``"expectation"``, ``"argmax"``, ``"sample"``) overrides a hard-attention
    model's inference mode for this call; ``None`` keeps the model's own. ``precision``: the
    decoder's weight products, ``fp32`` or ``bf16``.
    """
    with hard_attention_mode(model, hard_decoding):
        if beam_size > 1:
            return beam_search(model, inputs, beam_size=beam_size, max_len=max_len, alpha=alpha, precision=precision)
        return greedy(model, inputs, max_len=max_len, precision=precision)


@contextmanager
def hard_attention_mode(model: CaptionModel, mode: str | None) -> Iterator[None]:
    """Within the block, a hard-attention model decodes with ``mode`` (no effect for ``None`` or
    other mechanisms): the expected context, the argmax location or a sampled location per word."""
    attention = model.decoder.attention
    if mode is None or not isinstance(attention, HardSpatialAttention):
        yield
        return
    previous = attention.eval_mode
    attention.eval_mode = check_eval_mode(mode)
    try:
        yield
    finally:
        attention.eval_mode = previous


def per_image_beam_search(
    model: CaptionModel,
    images: Tensor,
    beam_size: int = 5,
    max_len: int = 20,
    alpha: float = 0.0,
    precision: Precision = "fp32",
) -> Decoded:
    """The usual public-implementation pattern: one beam search per image, in a Python loop.

    Kept as the baseline that ``scripts/caption_speed.py`` measures the batched search against.
    """
    parts = [
        beam_search(model, images[i : i + 1], beam_size, max_len, alpha, chunk=1, precision=precision)
        for i in range(images.shape[0])
    ]
    return Decoded(
        tokens=[p.tokens[0] for p in parts],
        scores=torch.cat([p.scores for p in parts]),
        weights=[p.weights[0] for p in parts],
    )
