"""Soft and hard attention over CNN annotation vectors (``soft-spatial``, ``hard-spatial``).

Xu et al., "Show, Attend and Tell: Neural Image Caption Generation with Visual Attention",
ICML 2015. The annotation vectors are the ``S = H * W`` positions of a convolutional feature
map; both mechanisms score them with the additive MLP ``e = v^T tanh(W h + U a + b)`` and
``alpha = softmax(e)``.

* ``soft-spatial`` returns the expectation ``z = sum_i alpha_i a_i`` (deterministic, trained by
  backpropagation), optionally scaled by the paper's gate ``beta = sigmoid(f_beta(h))``.
* ``hard-spatial`` samples one location ``s ~ Categorical(alpha)`` in training and returns its
  annotation vector (weights = the one-hot sample); with probability ``expectation_prob``
  (0.5 in the paper) the soft expectation is used instead, drawn per query, per sequence or
  (as the authors' code does) once for a whole minibatch (``expectation_scope``). The sampling is not
  differentiable, so the scorer learns through REINFORCE: after each call, :attr:`last` holds a
  :class:`HardAttentionSample` with the log-probability of the sampled locations and the entropy
  of ``alpha``, to be fed to :class:`vlattn.attention.reinforce.ReinforceLoss`. At inference it
  uses the expected context (the authors' released code), the argmax location, or a sample.

Keys may be given as ``[B, S, C]`` or as a feature map ``[B, C, H, W]`` (flattened row-major to
``S = H * W`` positions, so ``weights.view(B, H, W)`` is the attention map).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from vlattn.attention.additive import AdditiveAttention
from vlattn.attention.base import as_query_sequence, weighted_sum
from vlattn.attention.errors import AttentionConfigError
from vlattn.attention.scored import check_keys, expand_mask


def flatten_feature_map(features: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, H * W, C]`` (row-major positions); ``[B, S, C]`` passes through."""
    if features.dim() == 4:
        return features.flatten(2).transpose(1, 2)
    return features


class SoftSpatialAttention(AdditiveAttention):
    """Deterministic soft attention of Xu et al. (2015) over annotation vectors.

    Args:
        query_dim: decoder state size ``Dq``.
        key_dim: annotation vector size ``C``.
        hidden_dim: hidden size of the scoring MLP (default ``key_dim``).
        gate: multiply the context by ``beta = sigmoid(Linear(h))`` (section 4.2.1 of the paper).

    ``forward(query, keys, values=None, mask=None)``: ``query [B, Dq]`` or ``[B, Tq, Dq]``,
    ``keys [B, S, C]`` or ``[B, C, H, W]``, ``values`` likewise (default ``keys``), ``mask [B, S]``.
    Returns ``context [B, C]`` (``[B, Tq, C]``) and ``weights [B, S]`` (``[B, Tq, S]``).
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int | None = None, gate: bool = False) -> None:
        super().__init__(query_dim, key_dim, hidden_dim=hidden_dim)
        self.gate = nn.Linear(query_dim, 1) if gate else None

    def select(self, alpha: Tensor) -> Tensor:
        """The weights actually applied to the values, given ``alpha [B, Tq, S]``."""
        return alpha

    def project_keys(self, keys: Tensor) -> Tensor:
        """``U a``: ``[B, S, C]`` or ``[B, C, H, W]`` -> ``[B, S, H']``, reusable across steps."""
        return self.key_proj(flatten_feature_map(keys))

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        keys: Tensor,
        values: Tensor | None = None,
        mask: Tensor | None = None,
        projected_keys: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """See the class docstring; ``projected_keys`` is :meth:`project_keys`'s result."""
        keys = flatten_feature_map(keys)
        values = check_keys(keys, None if values is None else flatten_feature_map(values), mask)
        queries, single = as_query_sequence(query)
        alpha = self.normalise(self.score(queries, keys, projected_keys), expand_mask(mask))
        weights = self.select(alpha)
        context = weighted_sum(weights, values)
        if self.gate is not None:
            context = context * torch.sigmoid(self.gate(queries))
        if single:
            return context.squeeze(1), weights.squeeze(1)
        return context, weights


HardEvalMode = Literal["expectation", "argmax", "sample"]
HARD_EVAL_MODES: tuple[str, ...] = ("expectation", "argmax", "sample")
ScoreGradient = Literal["all", "scorer"]
ExpectationScope = Literal["step", "sequence", "batch"]
EXPECTATION_SCOPES: tuple[str, ...] = ("step", "sequence", "batch")


@dataclass
class HardAttentionSample:
    """What REINFORCE needs from hard-attention calls.

    From one call the tensors are ``[B]`` (single query) or ``[B, Tq]`` (``alpha``: one more
    axis of ``S`` locations); :meth:`stack` joins several calls (decoding steps) into ``[B, N]``
    (``alpha``: ``[B, N, S]``).

    Attributes:
        index: the chosen location of each query (sampled in training and in ``eval_mode="sample"``,
            else the argmax).
        log_prob: ``log alpha[index]`` with gradient to the scorer, where a location was sampled in
            training, else 0 (the examples that used the expectation, eval mode, fully masked rows).
        entropy: entropy ``-sum alpha log alpha`` of the attention distribution (with gradient).
        sampled: boolean, True where the one-hot sample was used in training (REINFORCE applies).
        alpha: the attention distribution itself (with gradient), whatever the weights applied.
    """

    index: Tensor
    log_prob: Tensor
    entropy: Tensor
    sampled: Tensor
    alpha: Tensor

    @staticmethod
    def stack(samples: list[HardAttentionSample]) -> HardAttentionSample:
        """Concatenate calls along a step axis: each ``[B]``/``[B, Tq]`` -> one ``[B, N]``."""
        if not samples:
            raise ValueError("no hard-attention calls to stack")

        def cat(name: str) -> Tensor:
            parts = [getattr(s, name) for s in samples]
            return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)

        alpha = torch.cat([s.alpha.reshape(s.alpha.shape[0], -1, s.alpha.shape[-1]) for s in samples], dim=1)
        return HardAttentionSample(cat("index"), cat("log_prob"), cat("entropy"), cat("sampled"), alpha)

    def squeezed(self) -> HardAttentionSample:
        """The sample of a single-query call: drop the ``Tq = 1`` axis."""
        return HardAttentionSample(
            self.index.squeeze(1),
            self.log_prob.squeeze(1),
            self.entropy.squeeze(1),
            self.sampled.squeeze(1),
            self.alpha.squeeze(1),
        )


class HardSpatialAttention(SoftSpatialAttention):
    """Stochastic hard attention of Xu et al. (2015), trained with REINFORCE.

    In training mode each query samples one location ``s ~ Categorical(alpha)`` and the
    weights are ``one_hot(s)``; with probability ``expectation_prob`` the soft weights ``alpha``
    are used instead, drawn as ``expectation_scope`` says: independently for each query
    (``"step"``), once per sequence (``"sequence"``: every step of a caption samples, or none does)
    or once per minibatch (``"batch"``, the authors' code: one Bernoulli draw, ``h_sampling_mask``,
    for all the captions of a batch and all their steps). The sequence and batch scopes hold
    between :meth:`begin_sequences` and :meth:`end_sequences` (a caller that does not call them
    gets per-step draws). In eval mode the weights
    are ``alpha`` (``eval_mode="expectation"``, the default, as the authors decode),
    ``one_hot(argmax alpha)`` (``"argmax"``) or ``one_hot(s)`` for a sample ``s``
    (``"sample"``). After every call :attr:`last` holds a :class:`HardAttentionSample`; collect
    it at each decoding step and pass ``HardAttentionSample.stack(steps)`` to
    :class:`~vlattn.attention.reinforce.ReinforceLoss`.

    Args:
        query_dim: decoder state size ``Dq``.
        key_dim: annotation vector size ``C``.
        hidden_dim: hidden size of the scoring MLP (default ``key_dim``).
        gate: the ``beta`` gate, as in :class:`SoftSpatialAttention`.
        expectation_prob: probability of using the expectation during training (paper: 0.5).
        expectation_scope: what one expectation draw covers: ``"step"``, ``"sequence"`` or ``"batch"``.
        eval_mode: ``"expectation"``, ``"argmax"`` or ``"sample"``.
        score_gradient: where the gradient of the sample log-probabilities goes: ``"all"`` (the
            scorer, the query and the keys, hence the networks that made them) or ``"scorer"``
            (only the scoring MLP's own parameters: the log-probability is recomputed from
            detached queries and keys, which costs a second scoring pass in training).
        estimator: ``"reinforce"`` (the paper: the sample is not differentiated, the scorer learns
            from the sample log-probabilities in :attr:`last`) or ``"gumbel"`` (straight-through
            Gumbel-softmax: the sample is ``argmax(log alpha + g)`` with Gumbel noise ``g``, the
            same distribution, and its one-hot weights carry the gradient of
            ``softmax((log alpha + g) / temperature)``; biased but without REINFORCE's variance,
            and :attr:`last` reports no REINFORCE samples).
        temperature: the Gumbel-softmax temperature (``estimator="gumbel"``).
    """

    last: HardAttentionSample | None

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        hidden_dim: int | None = None,
        gate: bool = False,
        expectation_prob: float = 0.5,
        expectation_scope: ExpectationScope = "step",
        eval_mode: HardEvalMode = "expectation",
        score_gradient: ScoreGradient = "all",
        estimator: Literal["reinforce", "gumbel"] = "reinforce",
        temperature: float = 1.0,
    ) -> None:
        super().__init__(query_dim, key_dim, hidden_dim=hidden_dim, gate=gate)
        if not 0.0 <= expectation_prob <= 1.0:
            raise AttentionConfigError(f"expectation_prob must be in [0, 1], got {expectation_prob}")
        self.expectation_prob = expectation_prob
        if expectation_scope not in EXPECTATION_SCOPES:
            raise AttentionConfigError(
                f"expectation_scope must be one of {', '.join(EXPECTATION_SCOPES)}, got {expectation_scope!r}"
            )
        self.expectation_scope: ExpectationScope = expectation_scope
        self.sequence_expectation: Tensor | None = None
        self.eval_mode: HardEvalMode = check_eval_mode(eval_mode)
        if score_gradient not in ("all", "scorer"):
            raise AttentionConfigError(f"score_gradient must be 'all' or 'scorer', got {score_gradient!r}")
        self.score_gradient: ScoreGradient = score_gradient
        if estimator not in ("reinforce", "gumbel"):
            raise AttentionConfigError(f"estimator must be 'reinforce' or 'gumbel', got {estimator!r}")
        if not temperature > 0:
            raise AttentionConfigError(f"temperature must be > 0, got {temperature}")
        self.estimator = estimator
        self.temperature = temperature
        self.last = None

    def begin_sequences(self, batch: int, device: torch.device | str = "cpu") -> None:
        """Draw the expectation choice of ``batch`` sequences for the steps that follow (training).

        With ``expectation_scope="sequence"`` each sequence draws its own; with ``"batch"`` one draw
        covers all of them; with ``"step"`` nothing is drawn here. Until :meth:`end_sequences`, a
        call on ``N <= batch`` rows uses the choices of the first ``N`` sequences (callers that
        drop finished sequences keep the live ones first, as a length-sorted batch does).
        """
        if self.expectation_scope == "step":
            self.sequence_expectation = None
            return
        draws = 1 if self.expectation_scope == "batch" else batch
        chosen = torch.rand(draws, device=device) < self.expectation_prob
        self.sequence_expectation = chosen.expand(batch)

    def end_sequences(self) -> None:
        """Back to per-step draws (after :meth:`begin_sequences`)."""
        self.sequence_expectation = None

    def _training_expectation(self, shape: torch.Size, device: torch.device) -> Tensor:
        """Where training uses the expectation, ``[B, Tq]``: the sequences' draws, else per query."""
        fixed = self.sequence_expectation
        if fixed is None:
            return torch.rand(shape, device=device) < self.expectation_prob
        if fixed.shape[0] < shape[0]:
            raise ValueError(f"begin_sequences drew for {fixed.shape[0]} sequences, called on {shape[0]} rows")
        return fixed[: shape[0]].to(device).unsqueeze(1).expand(shape)

    def select(self, alpha: Tensor, score_alpha: Tensor | None = None) -> Tensor:
        """Sample (training) or pick (eval) from ``alpha [B, Tq, S]``; fills :attr:`last`.

        ``score_alpha`` (same shape, the same values computed on detached inputs) is what the
        log-probability is taken from when given.
        """
        nonempty = alpha.sum(-1) > 0  # [B, Tq]; fully masked rows have all-zero alpha
        safe = torch.where(nonempty.unsqueeze(-1), alpha, torch.ones_like(alpha)).detach()
        tiny = torch.finfo(alpha.dtype).tiny
        gumbel = self.training and self.estimator == "gumbel"
        relaxed = None
        if gumbel:  # Gumbel-max: argmax(log alpha + g) ~ Categorical(alpha)
            noise = -torch.log(-torch.log(torch.rand_like(alpha).clamp(tiny, 1.0 - 1e-7)))
            perturbed = alpha.clamp_min(tiny).log() + noise
            relaxed = torch.softmax(perturbed / self.temperature, dim=-1)
            index = perturbed.detach().argmax(-1)
        elif self.training or self.eval_mode == "sample":
            flat = safe.reshape(-1, safe.shape[-1])
            index = torch.multinomial(flat, 1).view(alpha.shape[:-1])
        else:
            index = safe.argmax(-1)
        if self.training:
            use_expectation = self._training_expectation(index.shape, alpha.device)
        else:
            use_expectation = torch.full_like(nonempty, self.eval_mode == "expectation")
        one_hot = nn.functional.one_hot(index, alpha.shape[-1]).to(alpha.dtype) * nonempty.unsqueeze(-1)
        if relaxed is not None:  # straight through: the one-hot value, the relaxed sample's gradient
            one_hot = one_hot + (relaxed - relaxed.detach()) * nonempty.unsqueeze(-1)
        weights = torch.where(use_expectation.unsqueeze(-1), alpha, one_hot)
        sampled = nonempty & ~use_expectation & self.training & (not gumbel)
        source = alpha if score_alpha is None else score_alpha
        picked = source.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        log_prob = torch.where(sampled, picked.clamp_min(tiny).log(), 0.0)
        entropy = -(alpha * alpha.clamp_min(tiny).log()).sum(-1)
        self.last = HardAttentionSample(index, log_prob, entropy, sampled, alpha)
        return weights

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        keys: Tensor,
        values: Tensor | None = None,
        mask: Tensor | None = None,
        projected_keys: Tensor | None = None,
        score_keys: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """See the class docstring; fills :attr:`last`.

        ``score_keys`` (``[B, S, H']``): :meth:`project_keys` of the *detached* keys, reused across
        steps by ``score_gradient="scorer"`` (computed here when not given).
        """
        keys = flatten_feature_map(keys)
        values = check_keys(keys, None if values is None else flatten_feature_map(values), mask)
        queries, single = as_query_sequence(query)
        row_mask = expand_mask(mask)
        alpha = self.normalise(self.score(queries, keys, projected_keys), row_mask)
        score_alpha = None
        if self.training and self.score_gradient == "scorer":
            detached = keys.detach()
            if score_keys is None:
                score_keys = self.project_keys(detached)
            score_alpha = self.normalise(self.score(queries.detach(), detached, score_keys), row_mask)
        weights = self.select(alpha, score_alpha)
        context = weighted_sum(weights, values)
        if self.gate is not None:
            context = context * torch.sigmoid(self.gate(queries))
        if single:
            if self.last is not None:
                self.last = self.last.squeezed()
            return context.squeeze(1), weights.squeeze(1)
        return context, weights


def check_eval_mode(mode: str) -> HardEvalMode:
    """``mode`` if it is a hard-attention inference mode, else :class:`AttentionConfigError`."""
    if mode not in HARD_EVAL_MODES:
        raise AttentionConfigError(f"eval_mode must be one of {', '.join(HARD_EVAL_MODES)}, got {mode!r}")
    return mode  # type: ignore[return-value]
