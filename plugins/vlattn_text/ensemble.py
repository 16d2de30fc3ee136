"""An ensemble of independently initialised classifiers trained side by side.

Small data sets (a few thousand sentences) leave a single network's accuracy at the mercy of
its initialisation and dropout: members that start apart make different mistakes, and their
averaged class probabilities are right more often than any one of them. :class:`Ensemble`
holds ``K`` copies of one architecture; each member is trained on its own loss (the members'
gradients never mix), and predictions average the members' probabilities and attention. A fitted
linear model (``--linear nb-logreg``) can join the mixture at its own share.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from vlattn_text.models import ClassifierOutput


def mean_probability_logits(member_logits: Tensor) -> Tensor:
    """Logits of the members' mean class probabilities: ``[K, B, C] -> [B, C]``.

    With one sigmoid output (``C = 1``) the result is ``logit(mean_k sigmoid(l_k))``; otherwise
    ``log(mean_k softmax(l_k))``, whose softmax is the mean probability. Computed in log space
    so confident members do not overflow.
    """
    shares = member_logits.new_full((member_logits.shape[0],), 1.0 / member_logits.shape[0])
    return mixture_logits(member_logits, shares)


def mixture_logits(member_logits: Tensor, shares: Tensor) -> Tensor:
    """Logits of the mixture ``sum_k shares_k p_k`` of the members' class probabilities.

    ``member_logits [K, B, C]``, ``shares [K]`` (summing to 1) -> ``[B, C]``, in log space as
    :func:`mean_probability_logits`.
    """
    log_shares = shares.log().view(-1, 1, 1)
    if member_logits.shape[-1] == 1:
        log_pos = torch.logsumexp(nn.functional.logsigmoid(member_logits) + log_shares, dim=0)
        log_neg = torch.logsumexp(nn.functional.logsigmoid(-member_logits) + log_shares, dim=0)
        return log_pos - log_neg
    return torch.logsumexp(torch.log_softmax(member_logits, dim=-1) + log_shares, dim=0)


class Ensemble(nn.Module):
    """``K`` classifiers built by ``make_member`` (and optionally a fitted linear model); called
    like each of them.

    ``forward(ids [B, T], lengths [B], subwords=None)`` returns a :class:`ClassifierOutput` with
    the logits of the mixed probabilities ``[B, C]``, the networks' mean attention ``[B, T]``
    (``None`` if they have none) and every network's logits in ``members [K, B, C]`` (what
    training uses: each network's own loss). Without ``linear`` the mixture is the networks' mean;
    with it, ``linear_weight * p_linear + (1 - linear_weight) * mean_k p_k``. The linear model
    (:class:`~vlattn_text.linear.NaiveBayesLogistic`) is fitted before training and never trains
    by gradient.

    Args:
        make_member: builds one network; called ``size`` times (so each draws its own initial weights).
        size: ``K >= 2``, or ``K >= 1`` with ``linear``.
        linear: a fitted classifier with the same call, mixed in at ``linear_weight``, or ``None``.
        linear_weight: its share of the mixture, in ``(0, 1)``.
    """

    def __init__(
        self,
        make_member: Callable[[], nn.Module],
        size: int,
        linear: nn.Module | None = None,
        linear_weight: float = 0.5,
    ) -> None:
        super().__init__()
        if size < (1 if linear is not None else 2):
            raise ValueError(f"an ensemble needs at least 2 members, got {size}")
        if not 0.0 < linear_weight < 1.0:
            raise ValueError(f"linear_weight must be in (0, 1), got {linear_weight}")
        self.members = nn.ModuleList(make_member() for _ in range(size))
        self.linear = linear
        self.linear_weight = linear_weight

    def forward(self, ids: Tensor, lengths: Tensor, subwords: Tensor | None = None) -> ClassifierOutput:
        outputs = [member(ids, lengths, subwords) for member in self.members]
        logits = torch.stack([out.logits for out in outputs])
        weights = [out.weights for out in outputs if out.weights is not None]
        mean_weights = torch.stack(weights).mean(0) if len(weights) == len(outputs) else None
        if self.linear is None:
            return ClassifierOutput(mean_probability_logits(logits), mean_weights, members=logits)
        linear = self.linear(ids, lengths, subwords).logits
        networks = logits.shape[0]
        shares = logits.new_full((networks + 1,), (1.0 - self.linear_weight) / networks)
        shares[-1] = self.linear_weight
        mixed = mixture_logits(torch.cat([logits, linear.unsqueeze(0)]), shares)
        return ClassifierOutput(mixed, mean_weights, members=logits)
