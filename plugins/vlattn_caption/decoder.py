"""The Show-Attend-Tell LSTM decoder (Xu et al. 2015, section 3.1.2).

At every word ``t`` the decoder attends over the ``L`` annotation vectors ``a_i`` with the
previous state, gates the context, feeds ``[E y_{t-1}; z_t]`` to an LSTM and predicts the word
through the *deep output layer*::

    h_0 = tanh(f_init_h(mean_i a_i)),   c_0 = tanh(f_init_c(mean_i a_i))
    z_t, alpha_t = attention(h_{t-1}, a)         # any registered mechanism, by name
    z_t = sigmoid(f_beta(h_{t-1})) * z_t          # the scalar gate beta
    h_t, c_t = LSTM([E y_{t-1}; z_t], (h_{t-1}, c_{t-1}))
    p(y_t) = softmax(L_o dropout(tanh(E y_{t-1} + L_h h_t + L_z z_t)))

(The ``tanh`` in the deep output follows the authors' released code.) Optional *context
dropout* (not in the paper, off by default): in training, with probability ``p`` per example and
step the LSTM reads ``[E y_{t-1}; 0]`` instead of ``[E y_{t-1}; z_t]`` (the deep output still sees
``z_t``), so what a word needs from the image cannot always be remembered from an earlier
glimpse and every word learns to attend to what it describes. Training steps run on a
length-sorted batch and shrink it as captions end, so no LSTM or attention compute is spent on
padding. With ``hard-spatial`` attention the per-step sample log-probabilities, entropies and
attention distributions are collected for REINFORCE and the attention regularisers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vlattn.attention import build_attention
from vlattn.attention.additive import AdditiveAttention
from vlattn.attention.spatial import HardSpatialAttention, SoftSpatialAttention


@dataclass
class DecoderOutput:
    """Teacher-forced decoder output for a batch (original batch order).

    Attributes:
        logits: ``[B, T, V]`` word scores for targets ``captions[:, 1:]`` (0 on padding steps).
        weights: ``[B, T, L]`` attention weights applied at each step (0 on padding steps): for hard
            attention in training the one-hot samples (or ``alpha`` where the expectation was used).
        step_mask: ``[B, T]`` True on real steps.
        alpha: ``[B, T, L]`` the attention distributions (equal to ``weights`` for soft attention).
        annotation_mean: ``[B, D]`` mean annotation vector of each image (detached).
        log_prob: ``[B, T]`` hard-attention sample log-probabilities (training), or ``None``.
        entropy: ``[B, T]`` attention entropies (hard attention, training), or ``None``.
    """

    logits: Tensor
    weights: Tensor
    step_mask: Tensor
    alpha: Tensor
    annotation_mean: Tensor
    log_prob: Tensor | None = None
    entropy: Tensor | None = None


class ShowAttendTellDecoder(nn.Module):
    """LSTM decoder with attention over annotation vectors.

    Args:
        vocab_size: ``V``.
        annotation_dim: ``D``, size of each annotation vector.
        embed_dim: ``E``, word embedding size (also the deep output size).
        hidden_dim: ``H``, LSTM size.
        attention: registered attention mechanism name (``soft-spatial``, ``hard-spatial`` ...).
        attention_options: extra keyword options for the mechanism.
        dropout: dropout before the output layer.
        gate: use the scalar gate ``beta``.
        context_dropout: in training, probability of hiding the context from the LSTM input at
            a step (per example; the deep output still sees it). No parameters.
    """

    def __init__(
        self,
        vocab_size: int,
        annotation_dim: int,
        embed_dim: int = 128,
        hidden_dim: int = 256,
        attention: str = "soft-spatial",
        attention_options: dict[str, Any] | None = None,
        dropout: float = 0.5,
        gate: bool = True,
        context_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= context_dropout <= 1.0:
            raise ValueError(f"context_dropout must be in [0, 1], got {context_dropout}")
        self.context_dropout = context_dropout
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.init_h = nn.Linear(annotation_dim, hidden_dim)
        self.init_c = nn.Linear(annotation_dim, hidden_dim)
        self.attention = build_attention(attention, hidden_dim, annotation_dim, **(attention_options or {}))
        self.gate = nn.Linear(hidden_dim, 1) if gate else None
        self.cell = nn.LSTMCell(embed_dim + annotation_dim, hidden_dim)
        self.out_h = nn.Linear(hidden_dim, embed_dim)
        self.out_z = nn.Linear(annotation_dim, embed_dim)
        self.out = nn.Linear(embed_dim, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def init_state(self, annotations: Tensor) -> tuple[Tensor, Tensor]:
        """``[N, L, D]`` -> ``(h_0, c_0)``, each ``[N, H]``."""
        mean = annotations.mean(dim=1)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))

    def project_keys(self, annotations: Tensor) -> Tensor | None:
        """The attention's key projection ``U a`` of ``annotations [N, L, D]`` -> ``[N, L, H']``.

        Mechanisms scored by an MLP (``additive``, ``soft-spatial``, ``hard-spatial``) would
        otherwise project all ``L`` annotation vectors at every word; a decode computes this once
        and passes it (or its first rows, as a length-sorted batch shrinks) to :meth:`step`.
        ``None`` for mechanisms without a key projection.
        """
        if isinstance(self.attention, AdditiveAttention):
            return self.attention.project_keys(annotations)
        return None

    def step(
        self,
        prev_words: Tensor,
        state: tuple[Tensor, Tensor],
        annotations: Tensor,
        projected_keys: Tensor | None = None,
        score_keys: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        """One word for ``N`` sequences.

        Args:
            prev_words: ``[N]`` previous word ids.
            state: ``(h, c)``, each ``[N, H]``.
            annotations: ``[N, L, D]``.
            projected_keys: ``[N, L, H']`` from :meth:`project_keys` for these rows, or ``None``.
            score_keys: hard attention with ``score_gradient="scorer"``: the key projection of the
                detached annotations for these rows, or ``None``.

        Returns:
            logits ``[N, V]``, the new state, attention weights ``[N, L]``.
        """
        reuse: dict[str, Tensor] = {} if projected_keys is None else {"projected_keys": projected_keys}
        if score_keys is not None:
            reuse["score_keys"] = score_keys
        context, weights = self.attention(state[0], annotations, **reuse)
        logits, state = self._advance(self.embed(prev_words), context, state)
        return logits, state, weights

    def _advance(
        self, emb: Tensor, context: Tensor, state: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Gate, LSTM update and deep output: ``emb [N, E]``, ``context [N, D]``, ``state`` (each
        ``[N, H]``) -> logits ``[N, V]`` and the new state."""
        h, c = state
        if self.gate is not None:
            context = torch.sigmoid(self.gate(h)) * context
        seen = context
        if self.training and self.context_dropout > 0:
            keep = torch.rand(context.shape[0], 1, device=context.device) >= self.context_dropout
            seen = context * keep.to(context.dtype)
        h, c = self.cell(torch.cat([emb, seen], dim=1), (h, c))
        deep = torch.tanh(emb + self.out_h(h) + self.out_z(context))
        return self.out(self.dropout(deep)), (h, c)

    def scoring_keys(self, annotations: Tensor) -> Tensor | None:
        """``2 U a``, twice the scoring MLP's key projection, for :meth:`step_rows`.

        ``annotations [B, L, D]`` -> ``[B, L, H']``, computed once per decode; ``None`` when the
        mechanism is not a soft/hard spatial scorer without its own gate (then :meth:`step_rows`
        falls back to :meth:`step`).
        """
        attention = self.attention
        if isinstance(attention, SoftSpatialAttention) and attention.gate is None:
            return attention.project_keys(annotations).mul_(2.0)
        return None

    def step_rows(
        self,
        prev_words: Tensor,
        state: tuple[Tensor, Tensor],
        annotations: Tensor,
        scoring_keys: Tensor | None,
        rows: Tensor,
        per_image: int,
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        """One word for ``N`` hypotheses that share their images' annotations (inference only).

        The hypotheses are ``rows`` of a ``[B * per_image]`` grid, image-major: row ``r`` reads
        image ``r // per_image``. Unlike :meth:`step`, nothing of size ``[N, L, D]`` is gathered
        per hypothesis except one reused scoring buffer, and the context comes from one batched
        product per image. The attention score is evaluated as
        ``v^T tanh(x) = 2 v^T sigmoid(2 x) - sum(v)`` with the constant ``sum(v)`` dropped (the
        softmax over locations ignores it): the same function as :meth:`step` (equal up to float
        rounding), at a third of the cost of ``tanh`` on CPU.

        Args:
            prev_words: ``[N]`` previous word ids.
            state: ``(h, c)``, each ``[N, H]``.
            annotations: ``[B, L, D]``, one per image.
            scoring_keys: ``[B, L, H']`` from :meth:`scoring_keys`, or ``None`` (then the rows'
                annotations are gathered and :meth:`step` runs).
            rows: ``[N]`` grid rows of the hypotheses, ascending.
            per_image: hypotheses per image in the grid (the beam size).

        Returns:
            logits ``[N, V]``, the new state, attention weights ``[N, L]``.
        """
        images = torch.div(rows, per_image, rounding_mode="floor")
        attention = self.attention
        if scoring_keys is None or not isinstance(attention, SoftSpatialAttention):
            return self.step(prev_words, state, annotations.index_select(0, images))
        h = state[0]
        batch, locations = annotations.shape[0], annotations.shape[1]
        hidden = scoring_keys.index_select(0, images)  # [N, L, H'] = 2 U a, scored in place
        hidden.add_(attention.query_proj(h).mul_(2.0)[:, None, :]).sigmoid_()
        scores = torch.matmul(hidden, attention.v.weight[0] * 2.0)  # [N, L]
        alpha = attention.normalise(scores[:, None, :], None)
        weights = attention.select(alpha).squeeze(1)  # [N, L]
        grid = weights.new_zeros(batch * per_image, locations)
        grid[rows] = weights
        context = torch.bmm(grid.view(batch, per_image, locations), annotations).view(batch * per_image, -1)[rows]
        logits, state = self._advance(self.embed(prev_words), context, state)
        return logits, state, weights

    def last_hard_sample(self) -> Any:
        """The mechanism's last hard-attention sample (``None`` for deterministic mechanisms)."""
        return getattr(self.attention, "last", None)

    def forward(
        self, annotations: Tensor, captions: Tensor, lengths: Tensor, scheduled_sampling: float = 0.0
    ) -> DecoderOutput:
        """Teacher-forced pass.

        Args:
            annotations: ``[B, L, D]``.
            captions: ``[B, T+1]`` ``<start> w1 .. wn <end> <pad>...``.
            lengths: ``[B]`` tokens per caption including ``<start>`` and ``<end>``.
            scheduled_sampling: probability of feeding the model's own previous (sampled) word
                instead of the true one, per example and step (Bengio et al. 2015).
        """
        batch, steps = captions.shape[0], captions.shape[1] - 1
        order = torch.argsort(lengths, descending=True)
        annotations, captions = annotations[order].contiguous(), captions[order]
        active = (lengths[order] - 1).tolist()  # steps each (sorted) caption needs
        h, c = self.init_state(annotations)
        logits = annotations.new_zeros(batch, steps, self.vocab_size)
        weights = annotations.new_zeros(batch, steps, annotations.shape[1])
        attention = self.attention
        hard = isinstance(attention, HardSpatialAttention)
        alpha = annotations.new_zeros(batch, steps, annotations.shape[1]) if hard else weights
        log_prob = annotations.new_zeros(batch, steps) if hard and self.training else None
        entropy = annotations.new_zeros(batch, steps) if hard and self.training else None
        prev = captions[:, 0]
        keys = self.project_keys(annotations)
        score_keys = None
        if hard and self.training and attention.score_gradient == "scorer":
            score_keys = attention.project_keys(annotations.detach())
        for t in range(steps):
            n = sum(1 for a in active if a > t)
            if n == 0:
                break
            step_logits, (h, c), step_weights = self.step(
                prev[:n],
                (h[:n], c[:n]),
                annotations[:n],
                None if keys is None else keys[:n],
                None if score_keys is None else score_keys[:n],
            )
            logits[:n, t] = step_logits
            weights[:n, t] = step_weights
            sample = attention.last if hard else None
            if sample is not None:
                alpha[:n, t] = sample.alpha
                if log_prob is not None and entropy is not None:
                    log_prob[:n, t] = sample.log_prob
                    entropy[:n, t] = sample.entropy
            prev = captions[:n, t + 1]
            if scheduled_sampling > 0 and self.training:
                own = torch.multinomial(torch.softmax(step_logits.detach(), -1), 1).squeeze(1)
                swap = torch.rand(n, device=own.device) < scheduled_sampling
                prev = torch.where(swap, own, prev)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(batch, device=order.device)
        step_mask = torch.arange(steps, device=lengths.device)[None, :] < (lengths - 1)[:, None]
        return DecoderOutput(
            logits=logits[inverse],
            weights=weights[inverse],
            step_mask=step_mask,
            alpha=alpha[inverse] if hard else weights[inverse],
            annotation_mean=annotations.detach().mean(dim=1)[inverse],
            log_prob=None if log_prob is None else log_prob[inverse],
            entropy=None if entropy is None else entropy[inverse],
        )
