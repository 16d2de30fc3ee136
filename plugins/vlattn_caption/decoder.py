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
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlattn.attention import build_attention
from vlattn.attention.additive import AdditiveAttention
from vlattn.attention.spatial import HardSpatialAttention, SoftSpatialAttention
from vlattn_caption.inference import InferenceWeights, PackedLinear, Precision, inference_weights
from vlattn_caption.scoring import KeyGradient, WordScores, native_scores

#: Bytes of the attention buffer that :func:`_sigmoid_scores` fills at a time (fits a core's L2 cache).
SCORE_BUFFER_BYTES = 1 << 21


def lstm_update(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The LSTM cell's update from its gate pre-activations ``[N, 4H]`` (order i, f, g, o) and
    ``c [N, H]`` -> ``(h, c)``, as ``nn.LSTMCell`` computes it."""
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _sigmoid_scores(query: Tensor, keys: Tensor, images: Tensor, v: Tensor) -> Tensor:
    """``v^T sigmoid(keys[image] + query)`` for each row, one image's rows at a time.

    Args:
        query: ``[N, A]`` per row.
        keys: ``[B, L, A]`` per image.
        images: ``[N]`` image of each row, ascending.
        v: ``[A]``.

    Returns:
        ``[N, L]`` scores. The ``[rows, L, A]`` hidden layer lives in one reused buffer of at most
        :data:`SCORE_BUFFER_BYTES` (at least one row), never in memory for all rows at once.
    """
    rows, locations, width = query.shape[0], keys.shape[1], keys.shape[2]
    scores = query.new_empty(rows, locations)
    per_buffer = max(1, SCORE_BUFFER_BYTES // (locations * width * query.element_size()))
    buffer = query.new_empty(min(rows, per_buffer), locations, width)
    ids = images.tolist()
    start = 0
    while start < rows:
        image = ids[start]
        end = start + 1
        while end < rows and ids[end] == image and end - start < per_buffer:
            end += 1
        hidden = buffer[: end - start]
        torch.add(keys[image], query[start:end, None, :], out=hidden).sigmoid_()
        torch.mv(hidden.view(-1, width), v, out=scores[start:end].view(-1))
        start = end
    return scores


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


class _Pass(NamedTuple):
    """What a teacher-forced pass computes (shapes as in :class:`DecoderOutput`)."""

    logits: Tensor
    weights: Tensor
    alpha: Tensor
    log_prob: Tensor | None
    entropy: Tensor | None


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
        self.out = PackedLinear(embed_dim, vocab_size)  # nn.Linear, packed for inference on CPU
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
        precision: Precision = "fp32",
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        """One word for ``N`` sequences.

        Args:
            prev_words: ``[N]`` previous word ids.
            state: ``(h, c)``, each ``[N, H]``.
            annotations: ``[N, L, D]``.
            projected_keys: ``[N, L, H']`` from :meth:`project_keys` for these rows, or ``None``.
            score_keys: hard attention with ``score_gradient="scorer"``: the key projection of the
                detached annotations for these rows, or ``None``.
            precision: the output layer's product without gradient, ``fp32`` or ``bf16`` (see
                :mod:`vlattn_caption.inference`); the rest of the step is float32.

        Returns:
            logits ``[N, V]``, the new state, attention weights ``[N, L]``.
        """
        reuse: dict[str, Tensor] = {} if projected_keys is None else {"projected_keys": projected_keys}
        if score_keys is not None:
            reuse["score_keys"] = score_keys
        context, weights = self.attention(state[0], annotations, **reuse)
        logits, state = self._advance(self.embed(prev_words), context, state, precision)
        return logits, state, weights

    def _advance(
        self, emb: Tensor, context: Tensor, state: tuple[Tensor, Tensor], precision: Precision = "fp32"
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Gate, LSTM update and deep output: ``emb [N, E]``, ``context [N, D]``, ``state`` (each
        ``[N, H]``) -> logits ``[N, V]`` (the output layer in ``precision``) and the new state."""
        h, c = state
        if self.gate is not None:
            context = torch.sigmoid(self.gate(h)) * context
        seen = self._drop_context(context)
        h, c = self.cell(torch.cat([emb, seen], dim=1), (h, c))
        deep = torch.tanh(emb + self.out_h(h) + self.out_z(context))
        return self.out(self.dropout(deep), precision=precision), (h, c)

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
        precision: Precision = "fp32",
        fused: InferenceWeights | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        """One word for ``N`` hypotheses that share their images' annotations (inference only).

        The hypotheses are ``rows`` of a ``[B * per_image]`` grid, image-major: row ``r`` reads
        image ``r // per_image``. Unlike :meth:`step`, nothing of size ``[N, L, D]`` is gathered
        per hypothesis: the attention scores of one image's hypotheses are computed together from
        the image's keys (for float32 CPU tensors in one sweep of the native kernel
        :meth:`~vlattn_caption.scoring.NativeScores.image_scores`, else in a cache-sized buffer),
        and the context comes from one batched product per image. The products with the weights
        run on the fused, pre-packed matrices of :func:`~vlattn_caption.inference.inference_weights`
        (the LSTM, the attention query, the gate and the deep output: hooks on those modules do not
        fire); the embedding and the
        output layer ``out`` are called as modules. The attention score is evaluated as
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
            precision: the weight products (the fused ones and the output layer), ``fp32`` or
                ``bf16``: bfloat16 weights and inputs, float32 results (see
                :mod:`vlattn_caption.inference`). Scores, softmax, context and the LSTM's
                nonlinearities are float32 in both.
            fused: ``inference_weights(self, precision)``, where the caller holds it for a whole
                decode (the parameters do not change between its steps); ``None``: looked up here.

        Returns:
            logits ``[N, V]``, the new state, attention weights ``[N, L]``.
        """
        images = torch.div(rows, per_image, rounding_mode="floor")
        attention = self.attention
        if scoring_keys is None or not isinstance(attention, SoftSpatialAttention) or self.training:
            return self.step(prev_words, state, annotations.index_select(0, images), precision=precision)
        if fused is None:
            fused = inference_weights(self, precision)
        h, c = state
        from_state = fused.from_state(h)  # [N, 4H + A + g]
        query = from_state[:, fused.gates : fused.gates + fused.query]  # 2 (W h + b)
        v = fused.score_v if fused.score_v is not None else attention.v.weight[0] * 2.0
        native = native_scores(query, scoring_keys, v)
        if native is not None:  # float32 on the CPU: one sweep of scoring.c's kernel
            scores = native.image_scores(query, scoring_keys, images, v)
        else:
            scores = _sigmoid_scores(query, scoring_keys, images, v)
        alpha = attention.normalise(scores[:, None, :], None)
        weights = attention.select(alpha).squeeze(1)  # [N, L]
        batch, locations = annotations.shape[0], annotations.shape[1]
        if rows.shape[0] == batch * per_image:  # every hypothesis live: the rows are the grid
            context = torch.bmm(weights.view(batch, per_image, locations), annotations).view(rows.shape[0], -1)
        else:
            grid = weights.new_zeros(batch * per_image, locations)
            grid[rows] = weights
            context = torch.bmm(grid.view(batch, per_image, locations), annotations).view(batch * per_image, -1)[rows]
        if self.gate is not None:
            context = torch.sigmoid(from_state[:, -1:]) * context
        emb = self.embed(prev_words)
        gates = fused.from_input(torch.cat([emb, context], dim=1)).add_(from_state[:, : fused.gates])
        h, c = lstm_update(gates, c)
        deep = fused.deep(torch.cat([h, context], dim=1)).add_(emb).tanh_()
        return self.out(deep, precision=precision), (h, c), weights

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

        Soft attention without scheduled sampling takes :meth:`_forward_hoisted` (the words are
        known in advance); other mechanisms and scheduled sampling run :meth:`step` word by word.
        """
        batch, steps = captions.shape[0], captions.shape[1] - 1
        order = torch.argsort(lengths, descending=True)
        annotations, captions = annotations[order].contiguous(), captions[order]
        active = (lengths[order] - 1).tolist()  # steps each (sorted) caption needs
        attention = self.attention
        hoisted = (
            isinstance(attention, SoftSpatialAttention)
            and not isinstance(attention, HardSpatialAttention)
            and attention.gate is None
            and not (scheduled_sampling > 0 and self.training)
        )
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(batch, device=order.device)
        step_mask = torch.arange(steps, device=lengths.device)[None, :] < (lengths - 1)[:, None]
        if hoisted and max(active, default=0) > 0:  # already in the batch's order
            out = self._forward_hoisted(annotations, captions, active, steps, order)
        else:
            draws = isinstance(attention, HardSpatialAttention) and self.training
            if draws:  # the sequence- or batch-wide expectation choices (sorted order)
                attention.begin_sequences(batch, annotations.device)
            try:
                out = self._forward_steps(annotations, captions, active, steps, scheduled_sampling)
            finally:
                if draws:
                    attention.end_sequences()
            out = _Pass(out.logits[inverse], out.weights[inverse], out.alpha[inverse], out.log_prob, out.entropy)
        return DecoderOutput(
            logits=out.logits,
            weights=out.weights,
            step_mask=step_mask,
            alpha=out.alpha,
            annotation_mean=annotations.detach().mean(dim=1)[inverse],
            log_prob=None if out.log_prob is None else out.log_prob[inverse],
            entropy=None if out.entropy is None else out.entropy[inverse],
        )

    def _forward_hoisted(
        self, annotations: Tensor, captions: Tensor, active: list[int], steps: int, order: Tensor
    ) -> _Pass:
        """Teacher-forced soft-attention pass on a length-sorted batch, with everything that does
        not depend on the previous state taken out of the word loop.

        Before the loop: the embeddings of all input words and their share of the LSTM gates (one
        product), and the attention keys ``2 U a``. In the loop, per word: one product of ``h`` with
        the fused ``[W_hh; 2 W; f_beta]``, the attention scores ``2 v^T sigmoid(2 (U a + W h + b))``
        (the ``tanh`` MLP up to a constant the softmax ignores), the context, and the context's
        share of the gates. After the loop: the deep output and the word scores of every real
        step in one product each. Same function as the step loop, up to float rounding.

        ``order [B]``: the batch row of each sorted row. The scores and weights are written
        straight to the batch's order.
        """
        attention = self.attention
        assert isinstance(attention, SoftSpatialAttention)
        batch, locations = annotations.shape[0], annotations.shape[1]
        cell, embed_dim = self.cell, self.embed.embedding_dim
        gates_width = cell.weight_hh.shape[0]
        emb = self.embed(captions[:, :steps])  # [B, T, E]
        assert cell.bias_ih is not None and cell.bias_hh is not None
        from_words = F.linear(emb, cell.weight_ih[:, :embed_dim], cell.bias_ih + cell.bias_hh).unbind(1)  # [B, 4H]
        context_to_gates = cell.weight_ih[:, embed_dim:]
        keys = attention.project_keys(annotations) * 2.0  # [B, L, A]
        v = attention.v.weight[0] * 2.0
        state_weight, state_bias = self._state_weights()
        h, c = self.init_state(annotations)
        counts = [n for n in (sum(1 for a in active if a > t) for t in range(steps)) if n]
        key_gradient = KeyGradient()
        states, contexts, alphas = [], [], []
        for t, n in enumerate(counts):
            from_state = F.linear(h[:n], state_weight, state_bias)  # [n, 4H + A (+ 1)]
            query = from_state[:, gates_width : gates_width + attention.hidden_dim]
            scores = WordScores.apply(query, keys, v, key_gradient, t == 0, t == len(counts) - 1)  # [n, L]
            alpha = attention.normalise(scores[:, None, :], None).squeeze(1)  # [n, L]
            context = torch.bmm(alpha[:, None, :], annotations[:n]).squeeze(1)  # [n, D]
            if self.gate is not None:
                context = torch.sigmoid(from_state[:, -1:]) * context
            seen = self._drop_context(context)
            gates = from_words[t][:n] + from_state[:, :gates_width] + F.linear(seen, context_to_gates)
            h, c = lstm_update(gates, c[:n])
            states.append(h)
            contexts.append(context)
            alphas.append(alpha)
        rows = torch.cat([torch.arange(n, device=emb.device) for n in counts])  # token-major
        times = torch.cat([torch.full((n,), t, device=emb.device) for t, n in enumerate(counts)])
        token_emb = emb.reshape(batch * steps, -1).index_select(0, rows * steps + times)
        deep = torch.tanh(token_emb + self.out_h(torch.cat(states)) + self.out_z(torch.cat(contexts)))
        token_logits = self.out(self.dropout(deep))  # [tokens, V]
        flat = order[rows] * steps + times  # where each token goes in the (unsorted) batch
        logits = token_logits.new_zeros(batch * steps, self.vocab_size).index_copy_(0, flat, token_logits)
        token_alphas = torch.cat(alphas)  # bfloat16 under CPU autocast, like the scores
        weights = token_alphas.new_zeros(batch * steps, locations).index_copy_(0, flat, token_alphas)
        logits, weights = logits.view(batch, steps, -1), weights.view(batch, steps, locations)
        return _Pass(logits, weights, weights, None, None)

    def _state_weights(self) -> tuple[Tensor, Tensor]:
        """The fused ``[W_hh; 2 W; f_beta]`` read by ``h`` in :meth:`_forward_hoisted`, and its bias
        ``[0; 2 b; b_beta]`` (with gradient to the parameters)."""
        attention = self.attention
        assert isinstance(attention, SoftSpatialAttention)
        query = attention.query_proj
        weights = [self.cell.weight_hh, query.weight * 2.0]
        query_bias = query.bias * 2.0 if query.bias is not None else query.weight.new_zeros(query.out_features)
        biases = [self.cell.weight_hh.new_zeros(self.cell.weight_hh.shape[0]), query_bias]
        if self.gate is not None:
            weights.append(self.gate.weight)
            biases.append(self.gate.bias)
        return torch.cat(weights), torch.cat(biases)

    def _drop_context(self, context: Tensor) -> Tensor:
        """The context the LSTM reads: ``context [N, D]``, zeroed per row with probability
        ``context_dropout`` in training."""
        if self.training and self.context_dropout > 0:
            keep = torch.rand(context.shape[0], 1, device=context.device) >= self.context_dropout
            return context * keep.to(context.dtype)
        return context

    def _forward_steps(
        self, annotations: Tensor, captions: Tensor, active: list[int], steps: int, scheduled_sampling: float
    ) -> _Pass:
        """Teacher-forced pass through :meth:`step`, word by word, on a length-sorted batch (any
        mechanism, scheduled sampling); the result is in the sorted order."""
        batch = annotations.shape[0]
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
        return _Pass(logits, weights, alpha, log_prob, entropy)
