"""Caption corpora as lists of :class:`CaptionRecord`: synthetic scenes, Karpathy JSON, JSONL, CSV.

* ``synthetic``: scenes generated from a seed (:mod:`vlattn_caption.synthetic`), held in memory.
* Karpathy-split JSON (``dataset_coco.json``, ``dataset_flickr8k.json`` ...):
  ``{"images": [{"filename", "filepath"?, "split", "sentences": [{"tokens" | "raw"}]}]}``;
  ``restval`` counts as train. Images are read from ``image_root/filepath/filename``.
  An image may carry ``"objects": [{"colour", "shape", "size", "box"}]`` (the synthetic scenes
  written to disk do), which enables the grounding metric.
* JSONL (``{"image": ..., "caption": ..., "split"?: ...}`` per line) or CSV with ``image`` and
  ``caption`` columns (and optionally ``split``): rows of the same image are grouped; without a
  split column a stable hash of the image name puts about 5% in val and 5% in test.

This module imports no torch.
"""

from __future__ import annotations

import csv
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlattn.data.images import load_image
from vlattn.data.text import TextInputError, iter_lines, read_text, split_lines
from vlattn.errors import VlattnError
from vlattn.fileio import atomic_write_text
from vlattn_caption import synthetic
from vlattn_caption.vocab import tokenize


class CaptionDataError(VlattnError):
    """A caption dataset that cannot be read."""


@dataclass
class CaptionRecord:
    """One image and its reference captions.

    Attributes:
        name: the image's file name (or ``synthetic/<split>/<index>``).
        captions: tokenised reference captions.
        split: ``"train"``, ``"val"`` or ``"test"``.
        path: image file, or ``None`` when ``pixels`` holds the image.
        pixels: ``[H, W, 3]`` uint8 image held in memory (synthetic scenes).
        objects: ``[{"colour", "shape", "size", "box": [x0, y0, x1, y1]}]`` in pixels, if known.
        size: ``(width, height)`` of the image the boxes refer to.
    """

    name: str
    captions: list[list[str]]
    split: str
    path: Path | None = None
    pixels: np.ndarray | None = None
    objects: list[dict[str, Any]] = field(default_factory=list)
    size: tuple[int, int] | None = None

    def load(self) -> Image.Image:
        """The image as RGB."""
        if self.pixels is not None:
            return Image.fromarray(self.pixels, mode="RGB")
        assert self.path is not None
        return load_image(self.path)


def synthetic_records(
    split: str,
    count: int,
    seed: int = 0,
    image_size: int = 64,
    style: synthetic.SceneStyle = synthetic.STANDARD,
    prefix: str = "synthetic",
) -> list[CaptionRecord]:
    """``count`` synthetic scenes of ``split`` drawn with ``style``, rendered in memory
    (named ``<prefix>/<split>/<index>``)."""
    records = []
    for i in range(count):
        scene = synthetic.make_scene(seed, split, i, image_size, style)
        records.append(
            CaptionRecord(
                name=f"{prefix}/{split}/{i}",
                captions=[tokenize(c) for c in scene.captions],
                split=split,
                pixels=np.asarray(scene.image, dtype=np.uint8),
                objects=[_object_json(o) for o in scene.objects],
                size=(image_size, image_size),
            )
        )
    return records


def suite_records(suite: str, image_size: int = 64) -> list[CaptionRecord]:
    """The scenes of a named test suite (``synthetic.SUITES``), named ``<part>/test/<index>``."""
    if suite not in synthetic.SUITES:
        raise CaptionDataError(f"unknown scene suite {suite!r} (known: {', '.join(synthetic.SUITES)})")
    records: list[CaptionRecord] = []
    for part in synthetic.SUITES[suite]:
        records += synthetic_records("test", part.count, part.seed, image_size, part.style, prefix=part.name)
    return records


def _object_json(obj: synthetic.SceneObject) -> dict[str, Any]:
    return {"colour": obj.colour, "shape": obj.shape, "size": obj.size, "box": list(obj.box)}


def write_synthetic(
    out: str | Path,
    *,
    counts: dict[str, int],
    seed: int = 0,
    image_size: int = 64,
    progress: Callable[[int], None] | None = None,
    style: synthetic.SceneStyle = synthetic.STANDARD,
) -> Path:
    """Write synthetic scenes drawn with ``style`` as PNGs plus a Karpathy-style ``dataset.json``
    under ``out``.

    Returns the path of ``dataset.json`` (readable back with :func:`read_records`).
    """
    root = _image_folder(out)
    images = []
    for split, count in counts.items():
        for i in range(count):
            scene = synthetic.make_scene(seed, split, i, image_size, style)
            images.append(_save_scene(root, scene, f"{split}_{i:06d}.png", split, image_size))
            if progress is not None:
                progress(1)
    meta: dict[str, Any] = {"dataset": "synthetic-scenes", "seed": seed, "image_size": image_size}
    if style != synthetic.STANDARD:
        meta["style"] = style.to_json()
    return atomic_write_text(root / "dataset.json", json.dumps({**meta, "images": images}))


def write_suite(
    out: str | Path, suite: str, *, image_size: int = 64, progress: Callable[[int], None] | None = None
) -> Path:
    """Write a named test suite (``synthetic.SUITES``) as PNGs plus ``dataset.json`` (every image in
    split ``test``, with its part's name under ``"part"``). Returns the path of ``dataset.json``."""
    if suite not in synthetic.SUITES:
        raise CaptionDataError(f"unknown scene suite {suite!r} (known: {', '.join(synthetic.SUITES)})")
    root = _image_folder(out)
    images, parts = [], []
    for part in synthetic.SUITES[suite]:
        parts.append({"name": part.name, "seed": part.seed, "count": part.count, "style": part.style.to_json()})
        for i in range(part.count):
            scene = synthetic.make_scene(part.seed, "test", i, image_size, part.style)
            entry = _save_scene(root, scene, f"{part.name}_{i:06d}.png", "test", image_size)
            images.append({**entry, "part": part.name})
            if progress is not None:
                progress(1)
    meta = {"dataset": f"synthetic-scenes-{suite}", "image_size": image_size, "parts": parts, "images": images}
    return atomic_write_text(root / "dataset.json", json.dumps(meta))


def _image_folder(out: str | Path) -> Path:
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise CaptionDataError(f"{root} exists and is not a directory")
    (root / "images").mkdir(parents=True, exist_ok=True)
    return root


def _save_scene(root: Path, scene: synthetic.Scene, filename: str, split: str, image_size: int) -> dict[str, Any]:
    """Save ``scene`` under ``root/images`` and return its Karpathy image entry."""
    scene.image.save(root / "images" / filename)
    return {
        "filepath": "images",
        "filename": filename,
        "split": split,
        "sentences": [{"raw": c, "tokens": tokenize(c)} for c in scene.captions],
        "objects": [_object_json(o) for o in scene.objects],
        "size": [image_size, image_size],
    }


def read_records(path: str | Path, image_root: str | Path | None = None) -> list[CaptionRecord]:
    """Records of a Karpathy JSON, JSONL or CSV file; images are resolved against ``image_root``
    (default: the file's folder). Raises :class:`CaptionDataError` for an unusable file."""
    p = Path(path)
    if p.is_dir():
        candidate = p / "dataset.json"
        if not candidate.exists():
            raise CaptionDataError(f"{p} is a directory without a dataset.json")
        p = candidate
    if not p.exists():
        raise CaptionDataError(f"caption dataset not found: {p}")
    root = Path(image_root) if image_root else p.parent
    suffix = p.suffix.lower()
    if suffix not in (".json", ".jsonl", ".csv", ".tsv"):
        raise CaptionDataError(f"{p}: unknown caption file type (use .json (Karpathy), .jsonl or .csv)")
    try:
        text = read_text(p)
    except TextInputError as exc:
        raise CaptionDataError(str(exc)) from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CaptionDataError(f"{p} cannot be parsed: {exc}") from None
        return _karpathy(data, root, p)
    if suffix == ".jsonl":
        return _grouped(_jsonl_rows(text, p), root, p)
    return _grouped(_delimited_rows(text, p, "\t" if suffix == ".tsv" else ","), root, p)


def _jsonl_rows(text: str, source: Path) -> list[tuple[int, Any]]:
    """``(line number, object)`` for each non-blank line."""
    rows = []
    for line in iter_lines(text):
        if line.blank:
            continue
        try:
            rows.append((line.number, json.loads(line.text)))
        except json.JSONDecodeError as exc:
            raise CaptionDataError(f"{source}:{line.number}: not valid JSON ({exc.msg})") from None
    return rows


def _delimited_rows(text: str, source: Path, delimiter: str) -> list[tuple[int, Any]]:
    """``(line number, row as a dict)`` for each data row; the first row names the columns."""
    # Lines keep a "\n" so that a quoted cell spanning lines keeps its line break.
    reader = csv.DictReader((line + "\n" for line in split_lines(text)), delimiter=delimiter)
    try:
        return [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise CaptionDataError(f"{source}:{reader.line_num}: cannot be parsed ({exc})") from None


def _karpathy(data: Any, root: Path, source: Path) -> list[CaptionRecord]:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CaptionDataError(f"{source} is not a Karpathy-split JSON (no 'images' list)")
    records = []
    for n, item in enumerate(data["images"]):
        try:
            captions = [s["tokens"] if s.get("tokens") else tokenize(s["raw"]) for s in item["sentences"]]
            split = {"restval": "train"}.get(item.get("split", "train"), item.get("split", "train"))
            path = root / item.get("filepath", "") / item["filename"]
        except (KeyError, TypeError, AttributeError):
            raise CaptionDataError(f"{source}: image entry {n} lacks 'filename' or 'sentences'") from None
        size = tuple(item["size"]) if "size" in item else None
        records.append(
            CaptionRecord(item["filename"], captions, split, path=path, objects=item.get("objects", []), size=size)  # type: ignore[arg-type]
        )
    return records


def _grouped(rows: list[tuple[int, Any]], root: Path, source: Path) -> list[CaptionRecord]:
    by_image: dict[str, CaptionRecord] = {}
    for number, row in rows:
        if not isinstance(row, dict) or not row.get("image") or not row.get("caption"):
            raise CaptionDataError(f"{source}:{number}: the row needs 'image' and 'caption' values")
        name = str(row["image"])
        split = str(row.get("split") or _hash_split(name))
        record = by_image.setdefault(name, CaptionRecord(name, [], split, path=root / name))
        record.captions.append(tokenize(str(row["caption"])))
    return list(by_image.values())


def _hash_split(name: str) -> str:
    bucket = zlib.crc32(name.encode("utf-8")) % 100
    return "val" if bucket < 5 else "test" if bucket < 10 else "train"
