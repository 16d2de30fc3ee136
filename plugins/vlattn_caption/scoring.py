"""The attention scores of a teacher-forced pass, one word at a time, with a hand-written backward.

At word ``t`` the first ``n_t`` captions of a length-sorted batch (``n_t`` falls as captions end)
score the annotations with the MLP ``2 v^T sigmoid(K + q)``, where ``K = 2 U a [B, L, A]`` is
computed once per pass and ``q = 2 (W h + b) [n_t, A]`` (the ``tanh`` MLP ``v^T tanh(U a + W h + b)``
up to a constant that the softmax over locations ignores). Written with autograd, every word's
backward would build a ``[B, L, A]`` gradient for ``K`` (zeros, the first ``n_t`` rows copied in,
then added to the total): three full-size passes per word. :class:`WordScores` instead adds each
word's ``[n_t, L, A]`` share into one buffer of the pass, :class:`KeyGradient`, and hands the total
to ``K`` once, from the first word's backward. That backward runs last of all the words': word ``t``
needs the gradient of its state, which word ``t + 1``'s backward produces.

For float32 tensors on the CPU the scores and their backward run in the native kernels of
``scoring.c`` (compiled on first use by :mod:`vlattn.native_build`; ``VLATTN_NATIVE=0`` or no C
compiler leaves the PyTorch code): the forward scores every location in one sweep over the keys
and keeps the hidden ``sigmoid(K + q) [n_t, L, A]`` (:data:`KEEP_HIDDEN`), the backward produces
the gradients of ``q``, ``v`` and ``K`` in one sweep. Both compute the same function; anything
else (float64, bfloat16 under autocast, CUDA, non-contiguous keys) takes the PyTorch code.

A decoding step (:meth:`~vlattn_caption.decoder.ShowAttendTellDecoder.step_rows`, inference only)
scores its hypotheses with the forward-only :meth:`NativeScores.image_scores`: each hypothesis reads
the keys of its image, no hidden layer is kept. :meth:`NativeScores.top_words` picks a step's most
likely words from its logits in one pass (the log-softmax and top-k of the search).

The backward is not itself differentiable (no double backward).
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from vlattn.native_build import load_library

__all__ = ["KeyGradient", "NativeScores", "WordScores", "native_scores", "native_top_words"]

_P, _L = ctypes.c_void_p, ctypes.c_long

KEEP_HIDDEN = True
"""Whether the native forward keeps ``sigmoid(K + q) [n_t, L, A]`` for the backward (as the PyTorch
code does) rather than the backward computing it again: the memory of the pass for half the
backward's time."""


class NativeScores:
    """The kernels of ``scoring.c`` with tensor arguments; every tensor float32 on the CPU,
    ``keys``, ``v`` and the outputs contiguous, ``query``'s rows contiguous (any row stride)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._forward = library.vl_word_scores
        self._forward.argtypes, self._forward.restype = [_P, _L, _P, _P, _P, _P, _L, _L, _L], None
        self._backward = library.vl_word_scores_backward
        self._backward.argtypes, self._backward.restype = [_P, _L, _P, _P, _P, _P, _P, _P, _P, _L, _L, _L, _L], None
        self._image = library.vl_image_scores
        self._image.argtypes, self._image.restype = [_P, _L, _P, _P, _P, _P, _L, _L, _L], None
        self._top = library.vl_top_words
        self._top.argtypes, self._top.restype = [_P, _L, _L, _L, _L, _L, _P, _P], None

    def scores(self, query: Tensor, keys: Tensor, v: Tensor, hidden: Tensor | None = None) -> Tensor:
        """``[n, L]`` scores of ``query [n, A]`` against the first ``n`` rows of ``keys [B, L, A]``
        with ``v [A]``; ``hidden [n, L, A]`` (contiguous), where given, receives ``sigmoid(keys + query)``."""
        rows, (locations, width) = query.shape[0], keys.shape[1:]
        out = query.new_empty(rows, locations)
        self._forward(
            query.data_ptr(),
            query.stride(0),
            keys.data_ptr(),
            v.data_ptr(),
            out.data_ptr(),
            None if hidden is None else hidden.data_ptr(),
            rows,
            locations,
            width,
        )
        return out

    def image_scores(self, query: Tensor, keys: Tensor, images: Tensor, v: Tensor, out: Tensor | None = None) -> Tensor:
        """``[N, L]`` scores ``v . sigmoid(keys[images[i], l] + query[i])`` of ``query [N, A]``
        against ``keys [B, L, A]``, ``images [N]`` (int64, contiguous, ascending) the image of each
        row, ``v [A]``; written to ``out [N, L]`` (contiguous) where given. No hidden is kept."""
        rows, (locations, width) = query.shape[0], keys.shape[1:]
        if out is None:
            out = query.new_empty(rows, locations)
        self._image(
            query.data_ptr(),
            query.stride(0),
            keys.data_ptr(),
            images.data_ptr(),
            v.data_ptr(),
            out.data_ptr(),
            rows,
            locations,
            width,
        )
        return out

    def top_words(self, logits: Tensor, count: int, skip: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Each row's ``count`` most likely words, the two ``skip`` ids never: ``logits [N, V]``
        (contiguous, ``V >= count + 2``) -> log-probabilities ``[N, count]`` (float32, descending;
        the log-softmax over all ``V`` words) and word ids ``[N, count]`` (int64). Equal logits:
        the lower id first."""
        rows, vocab = logits.shape
        values = logits.new_empty(rows, count)
        words = torch.empty(rows, count, dtype=torch.long)
        self._top(logits.data_ptr(), rows, vocab, count, skip[0], skip[1], values.data_ptr(), words.data_ptr())
        return values, words

    def backward(
        self,
        query: Tensor,
        keys: Tensor,
        hidden: Tensor | None,
        v: Tensor,
        grad_scores: Tensor,
        grad_keys: Tensor | None,
        summed_rows: int,
    ) -> tuple[Tensor, Tensor]:
        """``(grad_query [n, A], grad_v [A])`` of :meth:`scores` for ``grad_scores [n, L]``
        (contiguous), reading the forward's ``hidden`` where given (else computing it again from
        ``query`` and ``keys``). ``grad_keys [B, L, A]`` (or ``None``) receives the keys' gradient on
        its first ``n`` rows: added to its first ``summed_rows`` rows, written to the others."""
        rows, (locations, width) = query.shape[0], keys.shape[1:]
        grad_query, grad_v = query.new_empty(rows, width), query.new_empty(width)
        self._backward(
            query.data_ptr(),
            query.stride(0),
            keys.data_ptr(),
            None if hidden is None else hidden.data_ptr(),
            v.data_ptr(),
            grad_scores.data_ptr(),
            grad_query.data_ptr(),
            grad_v.data_ptr(),
            None if grad_keys is None else grad_keys.data_ptr(),
            summed_rows,
            rows,
            locations,
            width,
        )
        return grad_query, grad_v


@cache
def _load() -> NativeScores | None:
    library = load_library(Path(__file__).with_name("scoring.c"))
    return None if library is None else NativeScores(library)


def native_scores(query: Tensor, keys: Tensor, v: Tensor) -> NativeScores | None:
    """The native kernels where they apply to these tensors (float32 on the CPU, ``keys`` and ``v``
    contiguous, ``query``'s rows contiguous, kernels available), else ``None``."""
    tensors = (query, keys, v)
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return None
    if not (keys.is_contiguous() and v.is_contiguous() and query.stride(1) == 1):
        return None
    return _load()


def native_top_words(logits: Tensor, count: int) -> NativeScores | None:
    """The native kernels where :meth:`NativeScores.top_words` applies to ``logits [N, V]``
    (float32 on the CPU, contiguous, ``V >= count + 2``, kernels available), else ``None``."""
    if logits.dtype != torch.float32 or logits.device.type != "cpu" or not logits.is_contiguous():
        return None
    if logits.dim() != 2 or logits.shape[1] < count + 2 or count < 1:
        return None
    return _load()


class KeyGradient:
    """The gradient of the keys ``[B, L, A]``, summed over the words of one backward pass.

    ``total``'s first ``filled`` rows hold the sum so far; the rows beyond are not yet written
    (words of shorter batches touch only leading rows, so no word needs a zeroed buffer).
    """

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.filled = 0

    def start(self, shape: torch.Size, like: Tensor, restart: bool) -> Tensor:
        """The buffer ``[B, L, A]``, begun afresh when ``restart`` or when there is none."""
        if restart or self.total is None:
            self.total, self.filled = like.new_empty(shape), 0
        return self.total

    def add(self, grad: Tensor) -> None:
        """Add one word's ``grad [n, L, A]`` to the first ``n`` rows (PyTorch code)."""
        assert self.total is not None
        rows, summed = grad.shape[0], min(self.filled, grad.shape[0])
        self.total[:summed] += grad[:summed]
        self.total[summed:rows] = grad[summed:]
        self.filled = max(self.filled, rows)

    def take(self) -> Tensor:
        """The summed gradient (rows no word reached are zero); the buffer is handed over."""
        assert self.total is not None
        total, self.total = self.total, None
        total[self.filled :].zero_()
        self.filled = 0
        return total


class WordScores(torch.autograd.Function):
    """``scores[i, l] = v . sigmoid(keys[i, l] + query[i])`` for the first ``n`` rows of ``keys``.

    ``apply(query [n, A], keys [B, L, A], v [A], accumulator, first, last)`` -> ``[n, L]``.
    ``first``/``last``: whether this is the pass's first / last word (``last`` starts the
    accumulator, ``first`` returns it as the keys' gradient). Native kernels or PyTorch code is
    chosen once per word, in the forward, by :func:`native_scores`.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, query: Tensor, keys: Tensor, v: Tensor, accumulator: KeyGradient, first: bool, last: bool
    ) -> Tensor:
        rows = query.shape[0]
        ctx.keys_shape, ctx.accumulator, ctx.first, ctx.last = keys.shape, accumulator, first, last
        ctx.native = native_scores(query, keys, v)
        if ctx.native is not None:
            hidden = keys.new_empty(rows, *keys.shape[1:]) if KEEP_HIDDEN else None
            ctx.save_for_backward(query, keys, hidden, v)
            return ctx.native.scores(query, keys, v, hidden)
        hidden = torch.add(keys[:rows], query[:, None, :]).sigmoid_()  # [n, L, A]
        ctx.save_for_backward(hidden, v)
        return torch.matmul(hidden, v)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_scores: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        accumulator: KeyGradient = ctx.accumulator
        want_keys = ctx.needs_input_grad[1]
        if ctx.native is not None:
            query, keys, hidden, v = ctx.saved_tensors
            total = accumulator.start(ctx.keys_shape, keys, ctx.last) if want_keys else None
            summed = accumulator.filled
            grad_scores = grad_scores.to(torch.float32).contiguous()
            grad_query, grad_v = ctx.native.backward(query, keys, hidden, v, grad_scores, total, summed)
            if want_keys:
                accumulator.filled = max(summed, query.shape[0])
        else:
            hidden, v = ctx.saved_tensors
            rows, locations, width = hidden.shape
            grad_v = torch.mv(hidden.view(rows * locations, width).t(), grad_scores.reshape(-1))
            grad_hidden = torch.addcmul(hidden, hidden, hidden, value=-1.0)  # sigmoid' = s (1 - s)
            grad_hidden.mul_(v).mul_(grad_scores[:, :, None])  # [n, L, A], the pre-activations' gradient
            grad_query = grad_hidden.sum(dim=1)
            if want_keys:
                accumulator.start(ctx.keys_shape, hidden, ctx.last)
                accumulator.add(grad_hidden)
        if not want_keys:
            return grad_query, None, grad_v, None, None, None
        return grad_query, accumulator.take() if ctx.first else None, grad_v, None, None, None
