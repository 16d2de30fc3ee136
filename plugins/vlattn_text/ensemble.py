"""An ensemble of independently initialised classifiers trained side by side.

Small data sets (a few thousand sentences) leave a single network's accuracy at the mercy of
its initialisation and dropout: members that start apart make different mistakes, and their
averaged class probabilities are right more often than any one of them. :class:`Ensemble`
holds ``K`` copies of one architecture; each member is trained on its own loss (the members'
gradients never mix), and predictions average the members' probabilities and attention.
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
    count = torch.log(torch.tensor(float(member_logits.shape[0]), device=member_logits.device))
    if member_logits.shape[-1] == 1:
        log_pos = torch.logsumexp(nn.functional.logsigmoid(member_logits), dim=0) - count
        log_neg = torch.logsumexp(nn.functional.logsigmoid(-member_logits), dim=0) - count
        return log_pos - log_neg
    return torch.logsumexp(torch.log_softmax(member_logits, dim=-1), dim=0) - count


class Ensemble(nn.Module):
    """``K`` classifiers built by ``make_member``; called like each of them.

    ``forward(ids [B, T], lengths [B], subwords=None)`` returns a :class:`ClassifierOutput` with
    the logits of the mean probabilities ``[B, C]``, the mean attention ``[B, T]`` (``None`` if
    the members have none) and every member's logits in ``members [K, B, C]`` (what training
    uses: each member's own loss).

    Args:
        make_member: builds one member; called ``size`` times (so each draws its own initial weights).
        size: ``K >= 2``.
    """

    def __init__(self, make_member: Callable[[], nn.Module], size: int) -> None:
        super().__init__()
        if size < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {size}")
        self.members = nn.ModuleList(make_member() for _ in range(size))

    def forward(self, ids: Tensor, lengths: Tensor, subwords: Tensor | None = None) -> ClassifierOutput:
        outputs = [member(ids, lengths, subwords) for member in self.members]
        logits = torch.stack([out.logits for out in outputs])
        weights = [out.weights for out in outputs if out.weights is not None]
        mean_weights = torch.stack(weights).mean(0) if len(weights) == len(outputs) else None
        return ClassifierOutput(mean_probability_logits(logits), mean_weights, members=logits)
