"""REINFORCE for hard attention: per-example rewards, baselines, a reward scale, an entropy bonus.

Xu et al. (2015), section 4.1, eq. 12: the hard-attention scorer ``W`` learns from

    dL/dW ~ sum_n [ lambda_r (r - b) d log p(s_n) / dW + lambda_e dH[s_n] / dW ]

where ``r = log p(y | s, a)`` is the reward of the sampled locations ``s``, ``b`` a baseline
(anything that does not depend on ``s``), ``lambda_r`` the reward scale and ``H`` the entropy of
the attention distribution. :class:`ReinforceLoss` returns a surrogate loss whose gradient is that
estimate; add it to the model's own (likelihood) loss.

The estimator is unbiased for any baseline that does not depend on the sample, and with
``reward_scale = 1`` its gradient, plus the likelihood gradient, is the gradient of the expected
loss (``tests/test_attention_hard.py`` enumerates every location to check it). The authors'
code (``capgen.py``) uses a *per-word* reward (the caption's mean log-likelihood per word), a
per-word moving-average baseline and ``lambda_r = 0.1``; a reward summed over the words of a
caption mixed with one scalar baseline makes the advantage a function of the caption's length.

Baselines (``baseline=``):

* ``"moving-average"``: ``b <- decay * b + (1 - decay) * mean(r)`` after each training batch
  (the paper; ``decay = 0.9``). It starts at the first batch's mean reward.
* ``"learned"``: ``b = moving average + Linear(features)``, the linear part fitted to the reward
  by least squares through an extra loss term (features: anything known before sampling, e.g.
  the mean annotation vector and the caption length; they are detached).
* ``"leave-one-out"``: the batch holds ``samples`` consecutive draws of each example; the
  baseline of a draw is the mean reward of the other draws of the same example.
* ``"none"``: ``b = 0``.

Credit (``credit=``), given per-step rewards ``r [B, N]`` (``r_b = sum_n r_bn``; e.g. each word's
log-likelihood over the caption's length):

* ``"sequence"`` (the paper): every sample of an example is credited with the whole advantage
  ``r_b - b_b``.
* ``"to-go"``: the sample of step ``n`` is credited only with the rewards of steps ``n`` and later,
  ``A_bn = sum_(m >= n) discount^(m - n) (r_bm - b_b / N_b)`` (the baseline spread evenly over the
  example's ``N_b`` real steps). A glimpse cannot change the words before it, so with
  ``discount = 1`` this drops terms whose expectation is zero: still unbiased, with less variance.
  ``discount < 1`` weighs the words right after a glimpse more (biased; ``0`` credits a glimpse
  with its own word alone).

Usage::

    attn = build_attention("hard-spatial", hidden_dim, feature_dim)
    reinforce = ReinforceLoss(baseline="moving-average", reward_scale=0.1, entropy_weight=0.01)
    ...                                                 # decode, collecting attn.last per step
    samples = HardAttentionSample.stack(steps)          # [B, N] tensors
    terms = reinforce.terms(samples.log_prob, reward=mean_word_log_likelihood,
                            entropy=samples.entropy, step_mask=caption_mask)
    loss = nll + terms.loss
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from vlattn.attention.errors import AttentionConfigError

BaselineKind = Literal["moving-average", "learned", "leave-one-out", "none"]
BASELINES: tuple[str, ...] = get_args(BaselineKind)
CreditKind = Literal["sequence", "to-go"]
CREDITS: tuple[str, ...] = get_args(CreditKind)


@dataclass
class ReinforceTerms:
    """The parts of the REINFORCE surrogate for one batch.

    Attributes:
        loss: scalar, ``score + entropy + baseline_loss`` (what to add to the model's loss).
        score: scalar, the score-function term ``-lambda_r sum_b w_b sum_n A_bn log p_bn`` (``A_bn =
            r_b - b_b`` with sequence credit).
        entropy: scalar, ``-lambda_e`` times the mean entropy over real steps (0 when disabled).
        baseline_loss: scalar, the learned baseline's squared error (0 for other baselines).
        advantage: ``[B]`` detached ``r - b`` (before the reward scale).
        baseline: ``[B]`` detached baseline values.
    """

    loss: Tensor
    score: Tensor
    entropy: Tensor
    baseline_loss: Tensor
    advantage: Tensor
    baseline: Tensor


class ReinforceLoss(nn.Module):
    """Surrogate loss for REINFORCE with a baseline, a reward scale and an entropy bonus.

    Args:
        baseline: ``"moving-average"`` (default), ``"learned"``, ``"leave-one-out"`` or ``"none"``
            (module docstring).
        baseline_decay: ``decay`` of the moving average (0.9 in the paper).
        entropy_weight: ``lambda_e``, weight of the entropy bonus (0 disables it).
        reward_scale: ``lambda_r``, the factor on the advantage (1 = the plain, unbiased score-function
            gradient; the authors' code uses 0.1).
        feature_dim: size of the features of the learned baseline (``baseline="learned"`` only).
        credit: ``"sequence"`` (default) or ``"to-go"`` (module docstring; needs per-step rewards).
        discount: the to-go credit's discount in ``[0, 1]`` (1 = unbiased).

    The moving average is a buffer, saved with the model and restored on load; it is updated
    only in training mode.
    """

    baseline: Tensor
    initialised: Tensor

    def __init__(
        self,
        baseline_decay: float = 0.9,
        entropy_weight: float = 0.01,
        *,
        baseline: BaselineKind = "moving-average",
        reward_scale: float = 1.0,
        feature_dim: int | None = None,
        credit: CreditKind = "sequence",
        discount: float = 1.0,
    ) -> None:
        super().__init__()
        if credit not in CREDITS:
            raise AttentionConfigError(f"credit must be one of {', '.join(CREDITS)}, got {credit!r}")
        if not 0.0 <= discount <= 1.0:
            raise AttentionConfigError(f"discount must be in [0, 1], got {discount}")
        self.credit: CreditKind = credit
        self.discount = discount
        if not 0.0 <= baseline_decay < 1.0:
            raise AttentionConfigError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
        if baseline not in BASELINES:
            raise AttentionConfigError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
        if not reward_scale > 0.0:
            raise AttentionConfigError(f"reward_scale must be > 0, got {reward_scale}")
        if entropy_weight < 0.0:
            raise AttentionConfigError(f"entropy_weight must be >= 0, got {entropy_weight}")
        if baseline == "learned" and not feature_dim:
            raise AttentionConfigError("a learned baseline needs feature_dim >= 1")
        self.baseline_decay = baseline_decay
        self.entropy_weight = entropy_weight
        self.baseline_kind: BaselineKind = baseline
        self.reward_scale = reward_scale
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.predictor = nn.Linear(feature_dim, 1) if baseline == "learned" and feature_dim else None
        if self.predictor is not None:
            nn.init.zeros_(self.predictor.weight)
            nn.init.zeros_(self.predictor.bias)

    def forward(
        self, log_prob: Tensor, reward: Tensor, entropy: Tensor | None = None, step_mask: Tensor | None = None
    ) -> Tensor:
        """The scalar surrogate loss, :meth:`terms` ``.loss`` (examples weighted equally)."""
        return self.terms(log_prob, reward, entropy, step_mask).loss

    def terms(
        self,
        log_prob: Tensor,
        reward: Tensor,
        entropy: Tensor | None = None,
        step_mask: Tensor | None = None,
        *,
        weight: Tensor | None = None,
        features: Tensor | None = None,
        samples: int = 1,
    ) -> ReinforceTerms:
        """The surrogate's parts.

        Args:
            log_prob: ``[B]`` or ``[B, N]`` log-probabilities of the sampled locations (0 where
                nothing was sampled), with gradient.
            reward: ``[B]`` reward of each example, e.g. the caption's mean log-likelihood per
                word, or ``[B, N]`` per-step rewards summing to it (required by ``credit="to-go"``);
                detached here.
            entropy: ``[B]`` or ``[B, N]`` entropies of the attention distributions, or ``None``.
            step_mask: ``[B, N]`` True on real steps (padding is ignored), or ``None``.
            weight: ``[B]`` weight of each example in the score term (default ``1 / B``); use the
                weights the examples have in the likelihood loss to keep the estimate unbiased.
            features: ``[B, F]`` inputs of the learned baseline (detached here).
            samples: consecutive draws per example in the batch (leave-one-out needs >= 2).

        Returns:
            :class:`ReinforceTerms`; ``score = -reward_scale * sum_b weight_b (r_b - b_b)
            sum_n log_prob[b, n]`` and ``entropy = -entropy_weight * mean_(real steps) H``.
        """
        step_reward = reward.detach().to(log_prob.dtype)
        if self.credit == "to-go" and (step_reward.dim() != 2 or log_prob.dim() != 2):
            raise AttentionConfigError("to-go credit needs per-step rewards and log-probabilities [B, N]")
        reward = summed(step_reward, step_mask)
        batch = reward.shape[0]
        base, baseline_loss = self._baseline(reward, features, samples)
        advantage = reward - base
        if weight is None:
            weight = reward.new_full((batch,), 1.0 / batch)
        weight = weight.detach().to(log_prob.dtype)
        if self.credit == "to-go":
            to_go = rewards_to_go(step_reward, base, step_mask, self.discount)  # [B, N], 0 on padding
            score = -self.reward_scale * (weight[:, None] * to_go * log_prob).sum()
        else:
            per_example = summed(log_prob, step_mask)
            score = -self.reward_scale * (weight * advantage * per_example).sum()
        bonus = log_prob.new_zeros(())
        if entropy is not None and self.entropy_weight:
            bonus = -self.entropy_weight * masked_mean(entropy, step_mask)
        if self.training and self.baseline_kind in ("moving-average", "learned"):
            with torch.no_grad():
                decay = self.baseline_decay
                self.baseline.mul_(decay).add_((1.0 - decay) * reward.mean().to(self.baseline.dtype))
        return ReinforceTerms(score + bonus + baseline_loss, score, bonus, baseline_loss, advantage, base)

    def _baseline(self, reward: Tensor, features: Tensor | None, samples: int) -> tuple[Tensor, Tensor]:
        """``[B]`` baseline values (detached) and the baseline's own loss (a scalar)."""
        zero = reward.new_zeros(())
        kind = self.baseline_kind
        if kind == "none":
            return torch.zeros_like(reward), zero
        if kind == "leave-one-out":
            if samples < 2 or reward.shape[0] % samples:
                raise AttentionConfigError(
                    f"a leave-one-out baseline needs >= 2 draws per example and a batch that is a multiple of "
                    f"them, got {samples} draws for a batch of {reward.shape[0]}"
                )
            groups = reward.view(-1, samples)
            others = (groups.sum(1, keepdim=True) - groups) / (samples - 1)
            return others.reshape(-1), zero
        if not bool(self.initialised) and self.training:
            self.baseline.fill_(reward.mean().item())
            self.initialised.fill_(True)
        average = self.baseline.to(reward.dtype).expand_as(reward)
        if self.predictor is None:
            return average, zero
        if features is None:
            raise AttentionConfigError("a learned baseline needs features")
        predicted = average + self.predictor(features.detach().to(reward.dtype)).squeeze(-1)
        return predicted.detach(), ((predicted - reward) ** 2).mean()


def rewards_to_go(reward: Tensor, baseline: Tensor, step_mask: Tensor | None, discount: float = 1.0) -> Tensor:
    """``A_bn = sum_(m >= n) discount^(m - n) (r_bm - b_b / N_b)`` for ``reward [B, N]`` and
    ``baseline [B]`` (spread evenly over each example's ``N_b`` real steps); ``[B, N]``, 0 on padding."""
    mask = torch.ones_like(reward) if step_mask is None else step_mask.to(reward.dtype)
    count = mask.sum(1, keepdim=True).clamp_min(1.0)
    centred = (reward - baseline[:, None] / count) * mask
    steps = reward.shape[1]
    if discount == 1.0:
        return centred.flip(1).cumsum(1).flip(1) * mask
    offsets = torch.arange(steps, device=reward.device)
    gap = (offsets[None, :] - offsets[:, None]).to(reward.dtype)  # [n, m] = m - n
    powers = torch.where(gap >= 0, torch.full_like(gap, discount).pow(gap.clamp_min(0)), torch.zeros_like(gap))
    return (centred @ powers.T) * mask


def summed(per_step: Tensor, step_mask: Tensor | None) -> Tensor:
    """``[B]`` or ``[B, N]`` -> ``[B]``: the sum over steps where ``step_mask`` is True."""
    if per_step.dim() == 1:
        return per_step
    if step_mask is not None:
        per_step = per_step * step_mask.to(per_step.dtype)
    return per_step.sum(-1)


def masked_mean(per_step: Tensor, step_mask: Tensor | None) -> Tensor:
    """Scalar mean of ``[B]`` or ``[B, N]`` values over the steps where ``step_mask`` is True."""
    if per_step.dim() == 1 or step_mask is None:
        return per_step.mean()
    mask = step_mask.to(per_step.dtype)
    return (per_step * mask).sum() / mask.sum().clamp_min(1.0)


def advantage_statistics(advantage: Tensor, lengths: Tensor) -> dict[str, float]:
    """Variance of ``advantage [B]`` and its correlation with ``lengths [B]`` (0 when either is constant)."""
    a = advantage.detach().double()
    n = lengths.detach().double()
    variance = float(a.var(unbiased=False)) if a.numel() > 1 else 0.0
    a, n = a - a.mean(), n - n.mean()
    denominator = float(a.norm() * n.norm())
    correlation = float((a * n).sum()) / denominator if denominator > 0 else 0.0
    return {"advantage_var": variance, "advantage_length_corr": correlation}
