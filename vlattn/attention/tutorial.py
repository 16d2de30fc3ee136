"""The reference tutorial's pooling layer (``tutorial``) and a corrected version.

The tutorial ("A Comprehensive Guide to Attention Mechanism in Deep Learning for Everyone")
pools the hidden states ``x_1..x_T`` of an LSTM into one vector with a Keras layer holding a
weight ``W [D, 1]`` and a bias ``b [T, 1]``, one bias *per time step*:

    e_t = tanh(x_t W + b_t);  a = softmax(e);  c = sum_t a_t x_t

:class:`TutorialAttention` reproduces it exactly (including its flaws, for reproduction):

* no query: the same pooling for every example;
* a bias per position, so the layer only accepts sequences up to the length it was built for
  and learns a positional prior rather than a content score;
* no mask: padding positions receive weight, as in the tutorial (``mask_padding=True``
  applies the mask instead);
* scores are ``tanh`` outputs, capped in ``[-1, 1]``: the largest weight one token can receive
  out of ``T`` is ``e / (e + (T - 1) / e) = e^2 / (e^2 + T - 1)``, about 19% at ``T = 32``,
  however relevant the token is.

:class:`CorrectedTutorialAttention` (``tutorial-corrected``) keeps the idea and removes the
flaws: ``e_t = v^T tanh(W x_t + b)`` with a shared bias, a learned ``v`` whose scale lifts the
cap (scores are no longer bounded), any sequence length, and masked padding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlattn.attention.base import Attention, masked_softmax
from vlattn.attention.errors import AttentionConfigError
from vlattn.attention.scored import check_keys


def pooled_output(query: Tensor | None, weights: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """``weights [B, S]`` x ``values [B, S, Dv]`` -> ``(context, weights)``, repeated over ``Tq``.

    The pooling ignores the query; a ``[B, Tq, Dq]`` query gets the same result at every step.
    """
    context = torch.bmm(weights.unsqueeze(1), values).squeeze(1)
    if query is not None and query.dim() == 3:
        steps = query.shape[1]
        return context.unsqueeze(1).expand(-1, steps, -1), weights.unsqueeze(1).expand(-1, steps, -1)
    return context, weights


class TutorialAttention(Attention):
    """The tutorial's layer: ``e_t = tanh(x_t W + b_t)``, softmax over time, weighted sum.

    Args:
        query_dim: ignored (the layer has no query); kept for the common constructor.
        key_dim: ``D``, the size of the pooled vectors.
        steps: the sequence length ``T`` the per-step bias is built for (the tutorial pads to
            32); shorter inputs use the first biases, longer ones are an error.
        mask_padding: apply ``mask`` (the tutorial does not: padding gets weight).

    ``forward(query, keys, values=None, mask=None)``: ``query`` is ignored (may be ``None``),
    ``keys [B, S, D]`` with ``S <= steps``. Returns ``context [B, Dv]`` and ``weights [B, S]``.
    """

    def __init__(self, query_dim: int, key_dim: int, steps: int = 32, mask_padding: bool = False) -> None:
        super().__init__(query_dim, key_dim)
        self.steps = steps
        self.mask_padding = mask_padding
        # Keras' "normal" initializer draws from N(0, 0.05^2); the bias starts at zero.
        self.weight = nn.Parameter(torch.randn(key_dim, 1) * 0.05)
        self.bias = nn.Parameter(torch.zeros(steps, 1))

    def forward(  # type: ignore[override]
        self,
        query: Tensor | None,
        keys: Tensor,
        values: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        values = check_keys(keys, values, mask)
        length = keys.shape[1]
        if length > self.steps:
            raise AttentionConfigError(
                f"the tutorial layer has a bias per time step and was built for {self.steps} "
                f"steps, got {length}; build it with steps={length} or use 'tutorial-corrected'"
            )
        scores = torch.tanh(keys @ self.weight + self.bias[:length]).squeeze(-1)  # [B, S]
        weights = masked_softmax(scores, mask if self.mask_padding else None)
        return pooled_output(query, weights, values)


class CorrectedTutorialAttention(Attention):
    """Query-free pooling done right: ``e_t = v^T tanh(W x_t + b)``, masked softmax, weighted sum.

    Args:
        query_dim: ignored (the layer has no query); kept for the common constructor.
        key_dim: ``D``, the size of the pooled vectors.
        hidden_dim: ``H``, rows of ``W`` (default ``key_dim``).

    ``forward(query, keys, values=None, mask=None)``: ``query`` is ignored (may be ``None``),
    ``keys [B, S, D]`` of any length, ``mask [B, S]``. Returns ``context [B, Dv]`` and
    ``weights [B, S]``; padding gets no weight.
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__(query_dim, key_dim)
        self.hidden_dim = hidden_dim or key_dim
        self.proj = nn.Linear(key_dim, self.hidden_dim)
        self.v = nn.Linear(self.hidden_dim, 1, bias=False)

    def forward(  # type: ignore[override]
        self,
        query: Tensor | None,
        keys: Tensor,
        values: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        values = check_keys(keys, values, mask)
        scores = self.v(torch.tanh(self.proj(keys))).squeeze(-1)  # [B, S]
        return pooled_output(query, masked_softmax(scores, mask), values)
