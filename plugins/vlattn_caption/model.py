"""The captioning model: encoder + Show-Attend-Tell decoder, and its training loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlattn.attention.reinforce import BaselineKind, CreditKind, ReinforceLoss
from vlattn_caption.decoder import DecoderOutput, ShowAttendTellDecoder
from vlattn_caption.encoder import Encoder


@dataclass
class LossParts:
    """The terms of the training loss (scalars unless noted).

    Attributes:
        total: what to minimise.
        nll: mean word cross-entropy (detached).
        doubly_stochastic: the attention regulariser ``mean_i (1 - sum_t alpha_ti)^2`` (detached).
        reinforce: the REINFORCE surrogate, score term + entropy bonus + baseline loss (detached).
        tokens: real words in the batch.
        likelihood: the mean word cross-entropy with its gradient, for diagnostics.
        score: the REINFORCE score-function term alone (with gradient), or ``None``.
        advantage: ``[B]`` per-word advantage ``r - b`` of each caption (hard attention), or ``None``.
        words: ``[B]`` words per caption (including ``<end>``).
    """

    total: Tensor
    nll: Tensor
    doubly_stochastic: Tensor
    reinforce: Tensor
    tokens: int
    likelihood: Tensor | None = None
    score: Tensor | None = None
    advantage: Tensor | None = None
    words: Tensor | None = None


#: Features of the learned baseline: the mean annotation vector and the caption length / LENGTH_SCALE.
LENGTH_SCALE = 10.0


class CaptionModel(nn.Module):
    """Image encoder and attention decoder.

    ``encode(images [B, 3, S, S]) -> annotations [B, L, D]``; ``forward(images, captions, lengths)``
    is the teacher-forced pass (:class:`DecoderOutput`). Decoding lives in
    :mod:`vlattn_caption.search`.

    Hard attention (``hard=True``) adds :class:`~vlattn.attention.reinforce.ReinforceLoss` with the
    given ``baseline`` (``moving-average``, ``learned``, ``leave-one-out``, ``none``),
    ``baseline_decay``, ``entropy_weight``, ``reward_scale``, ``credit`` and ``discount``; ``samples`` is the number of
    consecutive draws per caption that a training batch holds (see :func:`repeat_batch`).
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: ShowAttendTellDecoder,
        *,
        hard: bool = False,
        baseline_decay: float = 0.9,
        entropy_weight: float = 0.01,
        baseline: BaselineKind = "moving-average",
        reward_scale: float = 0.1,
        samples: int = 1,
        credit: CreditKind = "sequence",
        discount: float = 1.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.samples = samples
        self.reinforce = (
            ReinforceLoss(
                baseline_decay,
                entropy_weight,
                baseline=baseline,
                reward_scale=reward_scale,
                feature_dim=encoder.dim + 1,
                credit=credit,
                discount=discount,
            )
            if hard
            else None
        )

    @property
    def grid(self) -> int:
        return self.encoder.grid

    def encode(self, images: Tensor) -> Tensor:
        """``[B, 3, S, S]`` -> ``[B, L, D]``."""
        return self.encoder(images)

    def forward(
        self,
        images: Tensor,
        captions: Tensor,
        lengths: Tensor,
        scheduled_sampling: float = 0.0,
        annotations: Tensor | None = None,
    ) -> DecoderOutput:
        """Teacher-forced pass; ``annotations [B, L, D]``, when given, replace encoding ``images``."""
        if annotations is None:
            annotations = self.encode(images)
        return self.decoder(annotations, captions, lengths, scheduled_sampling)

    def loss(
        self, out: DecoderOutput, captions: Tensor, doubly_stochastic: float = 1.0, attention_entropy: float = 0.0
    ) -> LossParts:
        """The training loss.

        Masked word cross-entropy (mean per word) + ``doubly_stochastic`` * the attention
        regulariser ``mean_i (1 - sum_t alpha_ti)^2`` + ``attention_entropy`` * the mean entropy
        ``-sum_i alpha_ti log alpha_ti`` of the real steps' attention distributions (a positive weight
        makes each glimpse sharper) + for hard attention the REINFORCE surrogate. Both regularisers
        act on the distributions ``alpha``, not on hard attention's one-hot samples.

        The REINFORCE reward of a caption is its mean log-likelihood per word (given per word, so
        that ``credit="to-go"`` can credit each glimpse with the words from it on); its weight in the
        score term is its share of the batch's words (the weight it has in the mean word
        cross-entropy), so that with ``reward_scale = 1`` the estimate is unbiased for the gradient
        of the expected loss, and the advantage does not grow with the caption's length.
        """
        targets = captions[:, 1 : out.logits.shape[1] + 1]
        mask = out.step_mask
        logits = out.logits
        token_nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        token_nll = token_nll.view(targets.shape) * mask
        tokens = int(mask.sum())
        nll = token_nll.sum() / max(tokens, 1)
        coverage = out.alpha.sum(dim=1)  # [B, L]; alpha is 0 on padding steps
        regulariser = ((1.0 - coverage) ** 2).mean()
        total = nll + doubly_stochastic * regulariser if doubly_stochastic else nll
        if attention_entropy:
            entropy = -(out.alpha * out.alpha.clamp_min(1e-12).log()).sum(-1)  # [B, T]
            total = total + attention_entropy * (entropy * mask).sum() / max(tokens, 1)
        words = mask.sum(dim=1)
        parts = LossParts(
            total, nll.detach(), regulariser.detach(), nll.new_zeros(()), tokens, likelihood=nll, words=words
        )
        if self.reinforce is not None and out.log_prob is not None:
            per_word = words.clamp_min(1).to(token_nll.dtype)
            reward = -token_nll / per_word[:, None]  # [B, T]: summed, the mean log p(y_t | s, a) per word
            features = torch.cat([out.annotation_mean, (per_word / LENGTH_SCALE)[:, None]], dim=1)
            terms = self.reinforce.terms(
                out.log_prob,
                reward,
                out.entropy,
                mask,
                weight=per_word / max(tokens, 1),
                features=features,
                samples=self.samples,
            )
            parts.total = total + terms.loss
            parts.reinforce = terms.loss.detach()
            parts.score = terms.score
            parts.advantage = terms.advantage
        return parts


def repeat_batch(samples: int, *tensors: Tensor) -> list[Tensor]:
    """Each tensor's rows repeated ``samples`` times in place (``[B, ...]`` -> ``[B * samples, ...]``),
    so that consecutive rows are draws for the same caption (the leave-one-out baseline)."""
    return [t.repeat_interleave(samples, dim=0) for t in tensors]


#: Parameter groups of :func:`gradient_norms`.
MODULE_GROUPS = ("attention", "decoder", "encoder")


def module_parameters(model: CaptionModel) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by group: the attention mechanism, the rest of the decoder, the encoder."""
    attention = {id(p) for p in model.decoder.attention.parameters()}
    return {
        "attention": [p for p in model.decoder.attention.parameters() if p.requires_grad],
        "decoder": [p for p in model.decoder.parameters() if p.requires_grad and id(p) not in attention],
        "encoder": [p for p in model.encoder.parameters() if p.requires_grad],
    }


def gradient_norms(model: CaptionModel, loss: Tensor) -> dict[str, float]:
    """L2 norm of ``d loss / d params`` per group of :data:`MODULE_GROUPS` (the graph is kept)."""
    norms: dict[str, float] = {}
    for name, params in module_parameters(model).items():
        if not params:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        squares = [g.double().pow(2).sum() for g in grads if g is not None]
        norms[name] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms


def reinforce_gradient_ratios(model: CaptionModel, parts: LossParts) -> dict[str, float]:
    """``|grad score| / |grad likelihood|`` per module group, as ``grad_ratio_<group>`` (hard attention)."""
    if parts.score is None or parts.likelihood is None:
        return {}
    score = gradient_norms(model, parts.score)
    likelihood = gradient_norms(model, parts.likelihood)
    return {f"grad_ratio_{k}": score[k] / likelihood[k] if likelihood[k] > 0 else 0.0 for k in MODULE_GROUPS}
