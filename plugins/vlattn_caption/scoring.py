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

The backward is not itself differentiable (no double backward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class KeyGradient:
    """The gradient of the keys ``[B, L, A]``, summed over the words of one backward pass."""

    def __init__(self) -> None:
        self.total: Tensor | None = None


class WordScores(torch.autograd.Function):
    """``scores[i, l] = v . sigmoid(keys[i, l] + query[i])`` for the first ``n`` rows of ``keys``.

    ``apply(query [n, A], keys [B, L, A], v [A], accumulator, first, last)`` -> ``[n, L]``.
    ``first``/``last``: whether this is the pass's first / last word (``last`` starts the
    accumulator, ``first`` returns it as the keys' gradient).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, query: Tensor, keys: Tensor, v: Tensor, accumulator: KeyGradient, first: bool, last: bool
    ) -> Tensor:
        rows = query.shape[0]
        hidden = torch.add(keys[:rows], query[:, None, :]).sigmoid_()  # [n, L, A]
        ctx.save_for_backward(hidden, v)
        ctx.keys_shape, ctx.accumulator, ctx.first, ctx.last = keys.shape, accumulator, first, last
        return torch.matmul(hidden, v)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_scores: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        hidden, v = ctx.saved_tensors
        rows, locations, width = hidden.shape
        grad_v = torch.mv(hidden.view(rows * locations, width).t(), grad_scores.reshape(-1))
        grad_hidden = torch.addcmul(hidden, hidden, hidden, value=-1.0)  # sigmoid' = s (1 - s)
        grad_hidden.mul_(v).mul_(grad_scores[:, :, None])  # [n, L, A], the pre-activations' gradient
        grad_query = grad_hidden.sum(dim=1)
        if not ctx.needs_input_grad[1]:
            return grad_query, None, grad_v, None, None, None
        accumulator: KeyGradient = ctx.accumulator
        if ctx.last or accumulator.total is None:
            accumulator.total = hidden.new_zeros(ctx.keys_shape)
        accumulator.total[:rows] += grad_hidden
        grad_keys = None
        if ctx.first:
            grad_keys, accumulator.total = accumulator.total, None
        return grad_query, grad_keys, grad_v, None, None, None
