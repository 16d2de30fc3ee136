"""The captioning model: encoder + Show-Attend-Tell decoder, and its training loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from vlattn.attention.reinforce import ReinforceLoss
from vlattn_caption.decoder import DecoderOutput, ShowAttendTellDecoder
from vlattn_caption.encoder import Encoder


@dataclass
class LossParts:
    """The terms of the training loss (each a scalar)."""

    total: Tensor
    nll: Tensor
    doubly_stochastic: Tensor
    reinforce: Tensor
    tokens: int


class CaptionModel(nn.Module):
    """Image encoder and attention decoder.

    ``encode(images [B, 3, S, S]) -> annotations [B, L, D]``; ``forward(images, captions, lengths)``
    is the teacher-forced pass (:class:`DecoderOutput`). Decoding lives in
    :mod:`vlattn_caption.search`.
    """

    def __init__(self, encoder: Encoder, decoder: ShowAttendTellDecoder, *, hard: bool = False,
                 baseline_decay: float = 0.9, entropy_weight: float = 0.01) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.reinforce = ReinforceLoss(baseline_decay, entropy_weight) if hard else None

    @property
    def grid(self) -> int:
        return self.encoder.grid

    def encode(self, images: Tensor) -> Tensor:
        """``[B, 3, S, S]`` -> ``[B, L, D]``."""
        return self.encoder(images)

    def forward(self, images: Tensor, captions: Tensor, lengths: Tensor, scheduled_sampling: float = 0.0,
                annotations: Tensor | None = None) -> DecoderOutput:
        """Teacher-forced pass; ``annotations [B, L, D]``, when given, replace encoding ``images``."""
        if annotations is None:
            annotations = self.encode(images)
        return self.decoder(annotations, captions, lengths, scheduled_sampling)

    def loss(self, out: DecoderOutput, captions: Tensor, doubly_stochastic: float = 1.0,
             attention_entropy: float = 0.0) -> LossParts:
        """Masked word cross-entropy (mean per word) + ``doubly_stochastic`` * the attention
        regulariser ``mean_i (1 - sum_t alpha_ti)^2`` + ``attention_entropy`` * the mean entropy
        ``-sum_i alpha_ti log alpha_ti`` of the real steps' attention (soft attention; a positive
        weight makes each glimpse sharper) + the REINFORCE term for hard attention."""
        targets = captions[:, 1 : out.logits.shape[1] + 1]
        mask = out.step_mask
        token_nll = F.cross_entropy(out.logits.transpose(1, 2), targets, reduction="none") * mask
        tokens = int(mask.sum())
        nll = token_nll.sum() / max(tokens, 1)
        coverage = out.weights.sum(dim=1)  # [B, L]
        regulariser = ((1.0 - coverage) ** 2).mean()
        total = nll + doubly_stochastic * regulariser
        if attention_entropy and self.reinforce is None:
            weights = out.weights.clamp_min(1e-12)
            entropy = -(out.weights * weights.log()).sum(-1)  # [B, T]
            total = total + attention_entropy * (entropy * mask).sum() / max(tokens, 1)
        reinforce = nll.new_zeros(())
        if self.reinforce is not None and out.log_prob is not None:
            reward = -token_nll.sum(dim=1)  # log p(y | s, a) of each caption
            reinforce = self.reinforce(out.log_prob, reward, out.entropy, mask)
            # scale like the nll (mean per word) so one learning rate suits both terms
            reinforce = reinforce * (captions.shape[0] / max(tokens, 1))
            total = total + reinforce
        return LossParts(total, nll.detach(), regulariser.detach(), reinforce.detach(), tokens)


def count_parameters(model: nn.Module) -> dict[str, Any]:
    """Trainable and total parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable": trainable}
