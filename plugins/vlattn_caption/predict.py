"""Captioning image files with a trained model: batched, tolerant of bad files.

>>> captioner = Captioner.load()                    # the bundled synthetic-scenes model
>>> results = captioner.caption_files(["a.png", "b.jpg"], beam_size=5)   # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlattn.data.images import ImageLoadError, image_tensor, load_image
from vlattn.model_files import load_task_model
from vlattn_caption.bundled import BUNDLED, BUNDLED_MODEL, WEIGHTS_DIR
from vlattn_caption.inference import Precision, check_precision
from vlattn_caption.model import CaptionModel
from vlattn_caption.search import decode
from vlattn_caption.task import CaptionTask
from vlattn_caption.vocab import Vocabulary

__all__ = ["BUNDLED", "BUNDLED_MODEL", "WEIGHTS_DIR", "CaptionResult", "Captioner"]


@dataclass
class CaptionResult:
    """The caption of one image, or why there is none.

    Attributes:
        image: the path given.
        caption: the words joined by spaces ("" on error).
        tokens: the words.
        score: log-probability of the caption.
        attention: ``[n_words, h, w]`` attention grids of the words (``None`` on error).
        error: a one-line reason when the image could not be captioned.
        picture: the loaded RGB image (kept for attention figures).
    """

    image: str
    caption: str = ""
    tokens: list[str] = field(default_factory=list)
    score: float = 0.0
    attention: np.ndarray | None = None
    error: str | None = None
    picture: Image.Image | None = None

    def to_json(self, with_attention: bool = True) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        data: dict[str, Any] = {
            "image": self.image,
            "caption": self.caption,
            "tokens": self.tokens,
            "score": round(self.score, 4),
        }
        if with_attention and self.attention is not None:
            data["attention_grid"] = list(self.attention.shape[1:])
            data["attention"] = np.round(self.attention, 4).tolist()
        return data


class Captioner:
    """A loaded caption model and its vocabulary."""

    def __init__(self, task: CaptionTask, model: CaptionModel, device: str = "cpu") -> None:
        self.task = task
        self.model = model.eval()
        self.device = device
        assert task.vocab is not None
        self.vocab: Vocabulary = task.vocab

    @classmethod
    def load(cls, model: str | Path | None = None, device: str = "cpu") -> Captioner:
        """Load ``model``: a model file, a run folder, a bundled model's name (:data:`BUNDLED`), or
        the bundled synthetic-scenes model when ``None``; raises ``ModelFileError`` in one line
        (:func:`vlattn.model_files.resolve_model_file`)."""
        loaded = load_task_model(model, task=CaptionTask.name, bundled=BUNDLED, device=device)
        return cls(loaded.task, loaded.model, device)  # type: ignore[arg-type]

    @property
    def image_size(self) -> int:
        return self.task.image_size

    @property
    def max_len(self) -> int:
        """Most words per caption unless a call says otherwise (:meth:`CaptionTask.caption_words`)."""
        return self.task.caption_words()

    def caption_images(
        self,
        images: list[Image.Image],
        *,
        beam_size: int = 5,
        max_len: int | None = None,
        alpha: float = 0.0,
        hard_decoding: str | None = None,
        precision: Precision = "fp32",
    ) -> list[tuple[list[str], float, np.ndarray]]:
        """Captions of RGB images, decoded as one batch: ``(words, score, attention [n, h, w])``.

        ``hard_decoding`` (hard-attention models: ``expectation``, ``argmax``, ``sample``) overrides
        the model's inference mode; ``max_len`` defaults to :attr:`max_len`. ``precision``: the
        decoder's weight products, ``fp32`` or ``bf16`` (CPUs with AMX or AVX-512 BF16, CUDA;
        elsewhere a one-line ``VlattnError``)."""
        if not images:
            return []
        batch = torch.stack([image_tensor(img, self.image_size) for img in images]).to(self.device)
        with torch.no_grad():
            decoded = decode(
                self.model,
                batch,
                beam_size=beam_size,
                max_len=self.task.caption_words(max_len),
                alpha=alpha,
                hard_decoding=hard_decoding,
                precision=precision,
            )
        grid = self.model.grid
        out = []
        for ids, score, weights in zip(decoded.tokens, decoded.scores.tolist(), decoded.weights, strict=True):
            words = self.vocab.decode(ids)
            side = math.isqrt(weights.shape[-1]) if weights.numel() else grid
            maps = weights.numpy().reshape(-1, side, side)[: len(words)]
            out.append((words, float(score), maps))
        return out

    def caption_files(
        self,
        paths: list[str],
        *,
        beam_size: int = 5,
        max_len: int | None = None,
        alpha: float = 0.0,
        batch_size: int = 16,
        keep_pictures: bool = False,
        hard_decoding: str | None = None,
        precision: Precision = "fp32",
    ) -> list[CaptionResult]:
        """Caption every readable file; unreadable ones get a :class:`CaptionResult` with ``error``
        (``precision`` as in :meth:`caption_images`, checked before any file is read)."""
        check_precision(precision, self.device)
        results = [CaptionResult(image=str(p)) for p in paths]
        for start in range(0, len(results), batch_size):
            good: list[tuple[CaptionResult, Image.Image]] = []
            for result in results[start : start + batch_size]:
                try:
                    good.append((result, load_image(result.image)))
                except ImageLoadError as exc:
                    result.error = str(exc)
            captions = self.caption_images(
                [img for _, img in good],
                beam_size=beam_size,
                max_len=max_len,
                alpha=alpha,
                hard_decoding=hard_decoding,
                precision=precision,
            )
            for (result, img), (words, score, maps) in zip(good, captions, strict=True):
                result.tokens, result.caption, result.score, result.attention = words, " ".join(words), score, maps
                if keep_pictures:
                    result.picture = img
        return results
