"""Batched prediction with a trained text classifier: labels, scores and per-token attention."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from vlattn.checkpoint import LoadedModel
from vlattn.errors import ModelFileError, VlattnError
from vlattn.hardware import bf16_supported
from vlattn.model_files import load_task_model
from vlattn_text.bundled import BUNDLED, BUNDLED_MODEL, WEIGHTS_DIR
from vlattn_text.models import ClassifierOutput
from vlattn_text.task import TextClassifierTask, class_probabilities
from vlattn_text.tokenizer import Encoded

__all__ = ["BUNDLED", "BUNDLED_MODEL", "WEIGHTS_DIR", "Prediction", "TextClassifier"]


@dataclass
class Prediction:
    """One classified text.

    Attributes:
        text: the input.
        label: the predicted class name.
        score: the probability of ``label``.
        probabilities: every class name -> probability.
        tokens: the words the model read (after vocabulary lookup and truncation).
        attention: one weight per token, or ``None`` for a model without attention.
        encoder_attention: for a pretrained-encoder model asked for it, the encoder's last-layer
            self-attention averaged over its heads: row ``i`` holds how token ``i`` attended to each
            token (``[T, T]``, rows sum to 1); otherwise ``None``.
    """

    text: str
    label: str
    score: float
    probabilities: dict[str, float]
    tokens: list[str]
    attention: list[float] | None
    encoder_attention: list[list[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (a shallow copy: the lists are shared, not copied); ``encoder_attention``
        only when it was asked for."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["encoder_attention"] is None:
            del out["encoder_attention"]
        return out


class TextClassifier:
    """A loaded model file, ready to classify batches of texts.

    >>> clf = TextClassifier.load()            # doctest: +SKIP
    >>> clf.classify(["great phone"])[0].label  # doctest: +SKIP
    'positive'
    """

    def __init__(self, loaded: LoadedModel) -> None:
        if not isinstance(loaded.task, TextClassifierTask):
            raise ModelFileError(
                f"{loaded.header.path} is a {loaded.header.task!r} model, not a {TextClassifierTask.name!r} model"
            )
        self.task: TextClassifierTask = loaded.task
        self.model = loaded.model.eval()
        self.path = loaded.header.path
        self.precision = "fp32"
        if hasattr(self.model, "use_inference_pass"):
            self.model.use_inference_pass("fp32")  # the encoder's inference-only pass (same function)

    @classmethod
    def load(cls, path: str | Path | None = None) -> TextClassifier:
        """Load ``path`` (a model file, a training run folder: its best, else last, model, or the
        name of a bundled model, :data:`BUNDLED`), or the bundled sentiment model when ``None``
        (:func:`vlattn.model_files.resolve_model_file`)."""
        return cls(load_task_model(path, task=TextClassifierTask.name, bundled=BUNDLED))

    @property
    def labels(self) -> list[str]:
        """The model's class names, in output order."""
        return self.task.labels

    @property
    def default_batch_size(self) -> int:
        """Texts per forward pass that run fastest on a CPU: 32 for a pretrained encoder (its
        activations then stay in cache; 256 is 1.5x slower), 256 for the small recurrent models."""
        return 32 if self.has_encoder else 256

    def set_precision(self, precision: str) -> None:
        """Run a pretrained encoder's matrix products in ``precision``: ``fp32`` (the default),
        ``bf16`` (about 2x faster on CPUs with AMX or AVX-512 BF16; refused on others, where it
        would be emulated and slower) or ``int8``
        (dynamic quantization, about 1.5x faster); docs/text.md has their agreement with fp32 on
        the UCI sentences. Models without a pretrained encoder take ``fp32`` only."""
        if precision != "fp32" and not hasattr(self.model, "use_inference_pass"):
            raise VlattnError(f"--precision {precision} needs a pretrained-encoder model; {self.path} has none")
        if precision == "bf16" and not bf16_supported():  # emulated, it would be slower than fp32
            raise VlattnError(
                "--precision bf16 needs a CPU with AMX or AVX-512 BF16 (this one has neither); use fp32 or int8"
            )
        if hasattr(self.model, "use_inference_pass"):
            self.model.use_inference_pass(precision)  # type: ignore[operator]
        self.precision = precision

    @property
    def has_encoder(self) -> bool:
        """True for a model on a pretrained encoder (it can report the encoder's own attention)."""
        return hasattr(self.model, "encode") and hasattr(self.model, "pool")

    def iter_classify(
        self, texts: Sequence[str], batch_size: int | None = None, *, encoder_attention: bool = False
    ) -> Iterator[Prediction]:
        """Predictions for ``texts`` in order, computed ``batch_size`` at a time (with the encoder's
        last-layer attention when ``encoder_attention`` is set: pretrained-encoder models only)."""
        batch_size = batch_size or self.default_batch_size
        if batch_size < 1:
            raise VlattnError("batch size must be at least 1")
        if encoder_attention and not self.has_encoder:
            raise VlattnError(f"{self.path} has no pretrained encoder, so no encoder attention to show")
        # Batches of similar lengths pad less: tokenize each chunk of up to 64 batches, sort it by
        # token count, classify, and hand the predictions back in input order (on the UCI
        # sentences: 1.9% padding in a pretrained encoder's batches of 32).
        chunk = batch_size * 64
        for first in range(0, len(texts), chunk):
            part = texts[first : first + chunk]
            encoded = self.task.encode_many(part)
            order = sorted(range(len(part)), key=lambda i: len(encoded[i].ids))
            done: dict[int, Prediction] = {}
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = self._classify_batch([part[i] for i in rows], [encoded[i] for i in rows], encoder_attention)
                done.update(zip(rows, batch, strict=True))
            yield from (done[i] for i in range(len(part)))

    def classify(
        self, texts: Sequence[str], batch_size: int | None = None, *, encoder_attention: bool = False
    ) -> list[Prediction]:
        """Predictions for ``texts`` in order."""
        return list(self.iter_classify(texts, batch_size, encoder_attention=encoder_attention))

    @torch.inference_mode()
    def _classify_batch(
        self, texts: Sequence[str], encoded: Sequence[Encoded], encoder_attention: bool = False
    ) -> list[Prediction]:
        batch = self.task.collate([self.task.make_item(e) for e in encoded])
        encoder_weights = None
        if encoder_attention:
            states, mask, encoder_weights = self.model.encode(batch.ids, batch.lengths, last_attention=True)
            pooled, pool_weights = self.model.pool(states, mask)
            output = ClassifierOutput(self.model.classifier(pooled), pool_weights)
        else:
            output = self.model(batch.ids, batch.lengths, batch.subwords)
        probs = class_probabilities(output.logits.float()).tolist()
        weights = output.weights.float().tolist() if output.weights is not None else None
        predictions = []
        for row, (text, enc) in enumerate(zip(texts, encoded, strict=True)):
            best = max(range(len(self.labels)), key=probs[row].__getitem__)
            attention = [round(w, 6) for w in weights[row][: len(enc.ids)]] if weights is not None else None
            predictions.append(
                Prediction(
                    text=text,
                    label=self.labels[best],
                    score=round(probs[row][best], 6),
                    probabilities={name: round(p, 6) for name, p in zip(self.labels, probs[row], strict=True)},
                    tokens=enc.words,
                    attention=attention,
                    encoder_attention=None
                    if encoder_weights is None
                    else [
                        [round(w, 4) for w in line[: len(enc.ids)]]
                        for line in encoder_weights[row, : len(enc.ids)].tolist()
                    ],
                )
            )
        return predictions
