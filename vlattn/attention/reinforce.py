"""REINFORCE for hard attention: a moving-average baseline and an entropy bonus.

Xu et al. (2015), section 4.1: the gradient of the hard-attention scorer is estimated as
``(r - b) * d log p(s) / dW + lambda_e * dH[s] / dW`` with the reward ``r = log p(y | s, a)``
(the log-likelihood of the caption given the sampled locations), a moving-average baseline
``b <- decay * b + (1 - decay) * mean(r)`` and an entropy bonus ``H`` weighted by
``lambda_e``. :class:`ReinforceLoss` returns a surrogate loss whose gradient is exactly that
estimate; add it to the model's own loss::

    attn = build_attention("hard-spatial", hidden_dim, feature_dim)
    reinforce = ReinforceLoss(baseline_decay=0.9, entropy_weight=0.01)
    steps = []
    for t in range(T):
        context, weights = attn(h[t], features)
        steps.append(attn.last)
        ...
    nll = per_example_negative_log_likelihood          # [B]
    samples = HardAttentionSample.stack(steps)          # [B, T] tensors
    loss = nll.mean() + reinforce(samples.log_prob, reward=-nll, entropy=samples.entropy,
                                  step_mask=caption_mask)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlattn.attention.errors import AttentionConfigError


class ReinforceLoss(nn.Module):
    """Surrogate loss for REINFORCE with a moving-average baseline and an entropy bonus.

    Args:
        baseline_decay: ``decay`` of the baseline ``b <- decay * b + (1 - decay) * mean(r)``
            (0.9 in the paper). The baseline starts at the first batch's mean reward.
        entropy_weight: ``lambda_e``, weight of the entropy bonus (0 disables it).

    The baseline is a buffer, so it is saved with the model and restored on load; it is
    updated only in training mode.
    """

    baseline: Tensor
    initialised: Tensor

    def __init__(self, baseline_decay: float = 0.9, entropy_weight: float = 0.01) -> None:
        super().__init__()
        if not 0.0 <= baseline_decay < 1.0:
            raise AttentionConfigError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
        self.baseline_decay = baseline_decay
        self.entropy_weight = entropy_weight
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def forward(
        self,
        log_prob: Tensor,
        reward: Tensor,
        entropy: Tensor | None = None,
        step_mask: Tensor | None = None,
    ) -> Tensor:
        """The scalar surrogate loss.

        Args:
            log_prob: ``[B]`` or ``[B, N]`` log-probabilities of the sampled locations (0 where
                nothing was sampled), with gradient.
            reward: ``[B]`` reward of each example (e.g. the caption's log-likelihood); detached.
            entropy: ``[B]`` or ``[B, N]`` entropies of the attention distributions, or ``None``.
            step_mask: ``[B, N]`` True on real steps (padding steps are ignored), or ``None``.

        Returns:
            ``-mean_b((r_b - baseline) * sum_n log_prob[b, n])
            - entropy_weight * mean_b(sum_n H[b, n])``.
        """
        reward = reward.detach().to(log_prob.dtype)
        if not bool(self.initialised) and self.training:
            self.baseline.fill_(reward.mean().item())
            self.initialised.fill_(True)
        advantage = reward - self.baseline.to(log_prob.dtype)
        loss = -(advantage * summed(log_prob, step_mask)).mean()
        if entropy is not None and self.entropy_weight:
            loss = loss - self.entropy_weight * summed(entropy, step_mask).mean()
        if self.training:
            with torch.no_grad():
                decay = self.baseline_decay
                self.baseline.mul_(decay).add_((1.0 - decay) * reward.mean().to(self.baseline.dtype))
        return loss


def summed(per_step: Tensor, step_mask: Tensor | None) -> Tensor:
    """``[B]`` or ``[B, N]`` -> ``[B]``: the sum over steps where ``step_mask`` is True."""
    if per_step.dim() == 1:
        return per_step
    if step_mask is not None:
        per_step = per_step * step_mask.to(per_step.dtype)
    return per_step.sum(-1)
