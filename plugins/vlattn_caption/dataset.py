"""torch datasets over caption records, and the collate function that batches them.

A batch is a dict::

    images:     [B, 3, S, S] uint8 (the encoder normalises)
    captions:   [B, T] long: <start> w1 .. wn <end> <pad> ..., T = longest in the batch
    lengths:    [B] long: tokens including <start> and <end>
    index:      [B] long: record numbers
    references: list of B lists of tokenised reference captions (evaluation batches only)
    objects:    list of B lists of object dicts with boxes in pixels of ``sizes`` (may be empty)
    sizes:      list of B ``(width, height)`` the boxes refer to (or None)
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from vlattn.data.images import image_tensor
from vlattn_caption.records import CaptionRecord
from vlattn_caption.vocab import Vocabulary


class _ImageCache:
    """Decoded, resized images of the records (in memory: synthetic scenes are small)."""

    def __init__(self, records: list[CaptionRecord], image_size: int, keep: bool) -> None:
        self.records = records
        self.image_size = image_size
        self.keep = keep
        self.cache: dict[int, torch.Tensor] = {}

    def __getitem__(self, i: int) -> torch.Tensor:
        hit = self.cache.get(i)
        if hit is not None:
            return hit
        tensor = image_tensor(self.records[i].load(), self.image_size)
        if self.keep:
            self.cache[i] = tensor
        return tensor


class CaptionTrainingSet(Dataset[dict[str, Any]]):
    """One item per (image, caption) pair."""

    def __init__(
        self, records: list[CaptionRecord], vocab: Vocabulary, image_size: int, max_len: int, cache_images: bool = True
    ) -> None:
        self.images = _ImageCache(records, image_size, cache_images)
        self.vocab = vocab
        self.pairs = [(r, vocab.encode(c, max_len)) for r, rec in enumerate(records) for c in rec.captions if c]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        record, ids = self.pairs[i]
        return {"image": self.images[record], "caption": ids, "index": record}


class CaptionEvaluationSet(Dataset[dict[str, Any]]):
    """One item per image, with all its references (the first one also as ids, for the loss)."""

    def __init__(
        self, records: list[CaptionRecord], vocab: Vocabulary, image_size: int, max_len: int, cache_images: bool = True
    ) -> None:
        self.records = [r for r in records if r.captions]
        self.images = _ImageCache(self.records, image_size, cache_images)
        self.vocab = vocab
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        record = self.records[i]
        return {
            "image": self.images[i],
            "caption": self.vocab.encode(record.captions[0], self.max_len),
            "index": i,
            "references": record.captions,
            "objects": record.objects,
            "size": record.size,
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images, pad captions with 0 (``<pad>``), keep references and objects as lists."""
    lengths = torch.tensor([len(it["caption"]) for it in items], dtype=torch.long)
    captions = torch.zeros(len(items), int(lengths.max()), dtype=torch.long)
    for row, it in enumerate(items):
        captions[row, : len(it["caption"])] = torch.tensor(it["caption"], dtype=torch.long)
    batch: dict[str, Any] = {
        "images": torch.stack([it["image"] for it in items]),
        "captions": captions,
        "lengths": lengths,
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }
    if "references" in items[0]:
        batch["references"] = [it["references"] for it in items]
        batch["objects"] = [it["objects"] for it in items]
        batch["sizes"] = [it["size"] for it in items]
    return batch
