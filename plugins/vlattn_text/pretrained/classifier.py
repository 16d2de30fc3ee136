"""A text classifier on a pretrained encoder: BERT states -> attention pooling -> linear head.

The encoder is frozen (``finetune_layers=0``), fine-tuned in its top ``k`` layers, or fine-tuned
whole (``-1``). Its frozen part always runs in eval mode and is left out of the model's state dict:
a model file then holds only what was trained (a frozen-encoder head is a few kilobytes) and takes
the rest from the encoder's own files when loaded. With a feature cache the frozen part runs once
per distinct text during training, not once per epoch.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import torch
from torch import Tensor, nn

from vlattn.attention import lengths_to_mask
from vlattn.errors import VlattnError
from vlattn_text.models import ClassifierOutput, add_pooling_head
from vlattn_text.pretrained.bert import BertEncoder
from vlattn_text.pretrained.inference import InferenceRunner, Precision

PoolQuery = Literal["learned", "last", "mean"]


class PretrainedClassifier(nn.Module):
    """``ids [B, T]`` ([CLS] ... [SEP], 0 = padding), ``lengths [B]`` -> :class:`ClassifierOutput`.

    Args:
        encoder: a :class:`BertEncoder` holding pretrained weights.
        num_classes: classes (two: one sigmoid logit).
        attention: the pooling mechanism by registered name, or ``"none"`` for mean pooling
            (sentence-transformers' recipe).
        attention_options: keyword options of the mechanism.
        query: what asks the pooling attention: a ``learned`` vector, the ``[CLS]`` state
            (``last``: the encoder's summary token), or the masked ``mean`` of the states.
        dropout: dropout on the pooled vector.
        finetune_layers: trainable top layers of the encoder (0 = frozen, -1 = all, with embeddings).
        mix_layers: the states pooled are those of the top ``mix_layers`` layers side by side
            (``[B, T, mix_layers * H]``): lower layers add what the last one has abstracted away.
        head_lr: learning rate of the pooling and the head when the encoder is fine-tuned (0 = the
            trainer's); a fresh head learns at a rate that would wreck pretrained weights.
        feature_cache: texts whose frozen-part states are kept (0 = no cache); used while training.
    """

    def __init__(
        self,
        encoder: BertEncoder,
        num_classes: int,
        *,
        attention: str = "additive",
        attention_options: dict[str, Any] | None = None,
        query: PoolQuery = "learned",
        dropout: float = 0.1,
        finetune_layers: int = 0,
        mix_layers: int = 1,
        head_lr: float = 0.0,
        feature_cache: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        layers = len(encoder.layers)
        self.trainable_layers = layers if finetune_layers < 0 else min(finetune_layers, layers)
        self.frozen_layers = layers - self.trainable_layers
        self.embeddings_trainable = finetune_layers < 0
        if not 1 <= mix_layers <= layers + 1:
            raise VlattnError(f"mix_layers must be in 1..{layers + 1} (the embeddings and {layers} layers)")
        # hidden states by index: 0 = the embeddings' output, i = layer i's output
        self.mixed = list(range(layers + 1 - mix_layers, layers + 1))
        last_frozen = self.frozen_layers if not self.embeddings_trainable else -1
        # what the frozen part hands on: its mixed states and its last output (the trainable input)
        self.kept = sorted({i for i in self.mixed if i <= last_frozen} | {last_frozen}) if last_frozen >= 0 else []
        width = encoder.config.hidden_size * mix_layers
        add_pooling_head(
            self,
            width,
            num_classes,
            attention=attention,
            attention_options=attention_options,
            query=query,
            dropout=dropout,
        )
        frozen = [] if self.embeddings_trainable else [encoder.embeddings, *encoder.layers[: self.frozen_layers]]
        frozen_ids = {id(p) for module in frozen for p in module.parameters()}
        #: state-dict names of the frozen encoder part (left out of saved files)
        self.frozen_names = [f"encoder.{n}" for n, p in encoder.named_parameters() if id(p) in frozen_ids]
        for param in encoder.parameters():
            param.requires_grad_(id(param) not in frozen_ids)
        self.head_lr = head_lr
        self._cache: OrderedDict[bytes, Tensor] = OrderedDict()
        self.cache_size = 0 if self.embeddings_trainable else feature_cache  # nothing frozen: nothing to cache
        #: the precision of the inference-only encoder pass (:mod:`~vlattn_text.pretrained.inference`)
        #: used in eval mode without gradients; ``None`` = the modules' own pass everywhere
        self.inference_precision: Precision | None = None
        self._runner: InferenceRunner | None = None
        self._register_state_dict_hook(_drop_frozen)
        self._register_load_state_dict_pre_hook(self._fill_frozen, with_module=False)

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        """The encoder at ``lr``, the pooling and head at :attr:`head_lr` (the trainer's
        :func:`~vlattn.train.optim.trainable_groups` asks for these)."""
        encoder = [p for p in self.encoder.parameters() if p.requires_grad]
        own = {id(p) for p in self.encoder.parameters()}
        head = [p for p in self.parameters() if id(p) not in own]
        return [{"params": encoder, "lr": lr}, {"params": head, "lr": self.head_lr or lr}]

    # -- the frozen part ------------------------------------------------------------------------
    def _fill_frozen(self, state: dict[str, Tensor], prefix: str, *args: Any) -> None:
        own = dict(self.named_parameters())
        for name in self.frozen_names:
            state.setdefault(prefix + name, own[name].detach())

    def train(self, mode: bool = True) -> PretrainedClassifier:
        super().train(mode)
        if not self.embeddings_trainable:
            self.encoder.embeddings.eval()
        for layer in self.encoder.layers[: self.frozen_layers]:
            layer.eval()
        return self

    # -- forward ---------------------------------------------------------------------------------
    def use_inference_pass(self, precision: Precision | None) -> None:
        """Compute the encoder's states by the inference-only pass in ``precision`` (``"fp32"``:
        the same function as the modules', ``"int8"``: int8 matrix products) whenever the model is
        in eval mode without gradients and no attention is asked for; ``None`` turns it off."""
        self.inference_precision = precision
        self._runner = None if precision is None else InferenceRunner(self.encoder, precision)
        if self._runner is not None:
            self._runner.products()  # quantize now: errors and the one-off cost come at load time

    def lower_states(self, ids: Tensor, mask: Tensor) -> Tensor:
        """The frozen part's hidden states that the rest needs: ``[B, T, len(kept), H]`` for the
        indices :attr:`kept` (mixed ones, and the input of the first trainable layer)."""
        with torch.no_grad():
            x = self.encoder.embeddings(ids)
            outputs = [x] if 0 in self.kept else []
            for i, layer in enumerate(self.encoder.layers[: self.frozen_layers], start=1):
                x = layer(x, mask)
                if i in self.kept:
                    outputs.append(x)
        return torch.stack(outputs, dim=2)

    def cached_lower_states(self, ids: Tensor, lengths: Tensor, mask: Tensor) -> Tensor:
        """:meth:`lower_states`, computed once per distinct text (the cache keeps the most recent
        :attr:`cache_size` texts)."""
        sizes = lengths.tolist()
        keys = [row[:n].cpu().numpy().tobytes() for row, n in zip(ids, sizes, strict=True)]
        out = torch.zeros((*ids.shape, len(self.kept), self.encoder.config.hidden_size), device=ids.device)
        missing = []
        for i, key in enumerate(keys):
            states = self._cache.get(key)
            if states is None:
                missing.append(i)
            else:
                self._cache.move_to_end(key)
                out[i, : sizes[i]] = states
        if missing:
            rows = torch.tensor(missing, device=ids.device)
            width = max(sizes[i] for i in missing)
            fresh = self.lower_states(ids[rows, :width], mask[rows, :width])
            for j, i in enumerate(missing):
                out[i, : sizes[i]] = fresh[j, : sizes[i]]
                self._cache[keys[i]] = fresh[j, : sizes[i]].clone()
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    def encode(
        self, ids: Tensor, lengths: Tensor, *, last_attention: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(states [B, T, mix_layers * H], mask [B, T], last-layer attention averaged over heads
        [B, T, T] or None)``."""
        mask = lengths_to_mask(lengths, ids.shape[1])
        inference = not (last_attention or self.training or torch.is_grad_enabled())
        if self._runner is not None and inference:
            found = self._runner(ids, lengths, self.mixed)
            return (torch.cat(found, dim=-1) if len(found) > 1 else found[0]), mask, None
        last = self.encoder.layers[-1]
        last.need_weights = last_attention
        try:
            if self.embeddings_trainable:  # nothing frozen
                x = self.encoder.embeddings(ids)
                found = {0: x}
            else:
                use_cache = self.cache_size and not last_attention
                kept = self.cached_lower_states(ids, lengths, mask) if use_cache else self.lower_states(ids, mask)
                found = {index: kept[:, :, k] for k, index in enumerate(self.kept)}
                x = found[self.kept[-1]]
            for i, layer in enumerate(self.encoder.layers[self.frozen_layers :], start=self.frozen_layers + 1):
                x = layer(x, mask)
                found[i] = x
        finally:
            last.need_weights = False
        states = torch.cat([found[i] for i in self.mixed], dim=-1) if len(self.mixed) > 1 else found[self.mixed[0]]
        return states, mask, last.attention_weights if last_attention else None

    def pool(self, states: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(pooled [B, H], weights [B, T] or None)``."""
        counts = mask.sum(1, keepdim=True).clamp(min=1)
        mean = (states * mask.unsqueeze(-1)).sum(1) / counts
        if self.attention_name == "none":
            return mean, None
        if self.query_kind == "learned":
            query = self.query.expand(states.shape[0], -1)
        elif self.query_kind == "last":
            query = states[:, 0]  # the [CLS] state
        else:
            query = mean
        context, weights = self.attention(query, states, mask=mask)
        if weights is not None and weights.dim() == 3:
            weights = weights.mean(1)
        return context, weights

    def forward(self, ids: Tensor, lengths: Tensor, subwords: Tensor | None = None) -> ClassifierOutput:
        states, mask, _ = self.encode(ids, lengths)
        pooled, weights = self.pool(states, mask)
        return ClassifierOutput(self.classifier(self.dropout(pooled)), weights)


def _drop_frozen(module: PretrainedClassifier, state: dict[str, Tensor], prefix: str, _meta: Any) -> None:
    for name in module.frozen_names:
        state.pop(prefix + name, None)
