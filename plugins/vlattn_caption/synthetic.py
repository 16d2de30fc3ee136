"""Synthetic scenes: 1-3 coloured shapes on a textured background, with boxes and template captions.

Every scene is a pure function of ``(seed, split, index)``, so a dataset needs no download and is
the same on every machine. Each object has a colour, a shape kind and a size, and its bounding box
is kept, so attention can be checked against where the object really is.

Captions name the objects from left to right and their spatial relation::

    one object:    "a large red circle"              / "there is a large red circle"
    two objects:   "a small blue square above a large green triangle"
                   "a large green triangle below a small blue square"
    three objects: "a X left of a Y and a Z above it" / the same read from the right

The first caption of each scene is the canonical one; the second reads the scene the other way.

This module imports no torch (Pillow and numpy only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (40, 175, 65),
    "blue": (45, 90, 225),
    "yellow": (235, 205, 40),
    "purple": (150, 65, 195),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
SIZES: dict[str, float] = {"small": 0.19, "large": 0.31}  # side as a fraction of the image side
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SceneObject:
    """One shape: its words and its bounding box ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive)."""

    colour: str
    shape: str
    size: str
    box: tuple[int, int, int, int]

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass
class Scene:
    """A rendered scene: the image, its objects (left to right) and its captions."""

    image: Image.Image
    objects: list[SceneObject]
    captions: list[str] = field(default_factory=list)


def relation(a: SceneObject, b: SceneObject) -> str:
    """Where ``a`` is relative to ``b``: along the axis on which their centres differ most."""
    (ax, ay), (bx, by) = a.centre, b.centre
    if abs(ax - bx) >= abs(ay - by):
        return "left of" if ax < bx else "right of"
    return "above" if ay < by else "below"


def captions_for(objects: list[SceneObject]) -> list[str]:
    """The canonical caption and its reverse reading for objects sorted left to right."""
    if len(objects) == 1:
        return [f"a {objects[0].phrase}", f"there is a {objects[0].phrase}"]
    if len(objects) == 2:
        a, b = objects
        return [f"a {a.phrase} {relation(a, b)} a {b.phrase}", f"a {b.phrase} {relation(b, a)} a {a.phrase}"]
    a, b, c = objects[:3]
    return [
        f"a {a.phrase} {relation(a, b)} a {b.phrase} and a {c.phrase} {relation(c, b)} it",
        f"a {c.phrase} {relation(c, b)} a {b.phrase} and a {a.phrase} {relation(a, b)} it",
    ]


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], rgb: tuple[int, int, int]
) -> None:
    x0, y0, x1, y1 = box
    x1, y1 = x1 - 1, y1 - 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=rgb)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=rgb)
    elif shape == "cross":
        t = (x1 - x0) / 3
        draw.rectangle((x0 + t, y0, x1 - t, y1), fill=rgb)
        draw.rectangle((x0, y0 + t, x1, y1 - t), fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]], gap: int) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + gap and b[0] < x1 + gap and y0 < b[3] + gap and b[1] < y1 + gap for b in others)


def make_scene(seed: int, split: str, index: int, image_size: int = 64) -> Scene:
    """Render scene number ``index`` of ``split`` for ``seed`` (deterministic).

    Args:
        seed: dataset seed.
        split: ``"train"``, ``"val"`` or ``"test"`` (each split draws from its own stream).
        index: scene number within the split.
        image_size: side of the square image in pixels (>= 32).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    level = rng.integers(60, 140)
    tint = rng.integers(-12, 13, size=3)
    noise = rng.normal(0.0, 8.0, size=(image_size, image_size, 3))
    background = np.clip(level + tint + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(background, mode="RGB")
    draw = ImageDraw.Draw(image)

    count = int(rng.integers(1, 4))
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = rng.choice(len(kinds), size=count, replace=False)
    objects: list[SceneObject] = []
    boxes: list[tuple[int, int, int, int]] = []
    for k in chosen:
        colour, shape = kinds[int(k)]
        for _attempt in range(50):
            size_name = list(SIZES)[int(rng.integers(0, len(SIZES)))]
            side = max(6, round(SIZES[size_name] * image_size))
            x0 = int(rng.integers(1, image_size - side))
            y0 = int(rng.integers(1, image_size - side))
            box = (x0, y0, x0 + side, y0 + side)
            if not _overlaps(box, boxes, gap=max(2, image_size // 32)):
                break
        else:
            continue  # no room left: the scene keeps fewer objects
        boxes.append(box)
        _draw_shape(draw, shape, box, COLOURS[colour])
        objects.append(SceneObject(colour, shape, size_name, box))
    objects.sort(key=lambda o: (o.centre[0], o.centre[1]))
    return Scene(image=image, objects=objects, captions=captions_for(objects))


def object_words() -> frozenset[str]:
    """The nouns that name an object (the words whose attention grounding is measured)."""
    return frozenset(SHAPES)


def peak_in_box(weights: np.ndarray, box: tuple[int, int, int, int], image_size: int) -> bool:
    """Whether the centre of the highest cell of an attention grid ``[H, W]`` lies inside ``box``.

    ``box`` is in pixels of an ``image_size`` x ``image_size`` image.
    """
    grid_h, grid_w = weights.shape
    row, col = divmod(int(np.argmax(weights)), grid_w)
    x = (col + 0.5) * image_size / grid_w
    y = (row + 0.5) * image_size / grid_h
    x0, y0, x1, y1 = box
    return x0 <= x < x1 and y0 <= y < y1


def find_object(objects: list[SceneObject], colour: str | None, shape: str) -> SceneObject | None:
    """The scene object with this shape (and colour, if given), or ``None``."""
    matches = [o for o in objects if o.shape == shape and (colour is None or o.colour == colour)]
    return matches[0] if len(matches) == 1 else None


def distance_to_box(point: tuple[float, float], box: tuple[int, int, int, int]) -> float:
    """Euclidean distance in pixels from ``point`` to ``box`` (0 inside)."""
    x, y = point
    x0, y0, x1, y1 = box
    dx = max(x0 - x, 0.0, x - x1)
    dy = max(y0 - y, 0.0, y - y1)
    return math.hypot(dx, dy)
