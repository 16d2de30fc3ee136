"""Synthetic scenes: coloured shapes on a textured background, with boxes and template captions.

Every scene is a pure function of ``(seed, split, index)``, so a dataset needs no download and is
the same on every machine. Each object has a colour, a shape kind and a size, and its bounding box
is kept, so attention can be checked against where the object really is.

Captions name the objects from left to right and their spatial relation::

    one object:    "a large red circle"              / "there is a large red circle"
    two objects:   "a small blue square above a large green triangle"
                   "a large green triangle below a small blue square"
    three objects: "a X left of a Y and a Z above it" / the same read from the right
    more objects:  "a X left of a Y and a Z above it and a W right of it" (each further object
                   is placed relative to the one named before it: "it")

The first caption of each scene is the canonical one; the second reads the scene the other way.

:class:`SceneStyle` sets the ranges a scene is drawn from (object count, object size, background
brightness, noise); its defaults give the standard scenes (1-3 objects of two sizes). ``SUITES``
names fixed test suites drawn from other ranges, e.g. ``"varied"``.

This module imports no torch (Pillow and numpy only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any

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
#: With a size range, a side below this fraction of the image side is called "small".
SMALL_BELOW = 0.25


@dataclass(frozen=True)
class SceneStyle:
    """The ranges scenes are drawn from; the defaults give the standard scenes.

    Attributes:
        objects: ``(fewest, most)`` objects per scene, both included, within 1-5 (a scene keeps
            fewer when no room is left for the next object).
        sizes: ``(smallest, largest)`` object side as a fraction of the image side, drawn
            uniformly (named "small" below ``SMALL_BELOW``, else "large"); ``None``: the two fixed
            sizes of ``SIZES``.
        background: ``(lowest, highest)`` background grey level, highest excluded, within 0-256.
        noise: standard deviation of the background's pixel noise (grey levels).
    """

    objects: tuple[int, int] = (1, 3)
    sizes: tuple[float, float] | None = None
    background: tuple[int, int] = (60, 140)
    noise: float = 8.0

    def __post_init__(self) -> None:
        low, high = self.objects
        if not 1 <= low <= high <= 5:
            raise ValueError(f"object count range must lie within 1-5 (low <= high), got {low}-{high}")
        if self.sizes is not None and not 0.05 <= self.sizes[0] <= self.sizes[1] <= 0.45:
            raise ValueError(f"object size range must lie within 0.05-0.45 of the image side, got {self.sizes}")
        if not 0 <= self.background[0] < self.background[1] <= 256:
            raise ValueError(f"background range must lie within 0-256 (low < high), got {self.background}")
        if not 0.0 <= self.noise <= 100.0:
            raise ValueError(f"noise must be in [0, 100], got {self.noise}")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SceneStyle:
        """A style from ``{"objects": [lo, hi], "sizes": [lo, hi], "background": [lo, hi], "noise": x}``
        (every key optional). Raises ``ValueError`` for unknown keys or values out of range."""
        unknown = set(data) - {"objects", "sizes", "background", "noise"}
        if unknown:
            raise ValueError(f"unknown scene option(s): {', '.join(sorted(unknown))}")
        try:
            objects = tuple(int(v) for v in data.get("objects", cls.objects))
            sizes = data.get("sizes")
            background = tuple(int(v) for v in data.get("background", cls.background))
            return cls(
                objects=(objects[0], objects[1]),
                sizes=None if sizes is None else (float(sizes[0]), float(sizes[1])),
                background=(background[0], background[1]),
                noise=float(data.get("noise", cls.noise)),
            )
        except (TypeError, IndexError) as exc:
            raise ValueError(f"scene options need [low, high] pairs and a number for noise ({exc})") from None

    @classmethod
    def from_options(
        cls,
        objects: str = "1-3",
        sizes: str = "",
        background: str = "60-140",
        noise: float = 8.0,
        *,
        prefix: str = "",
    ) -> SceneStyle:
        """A style from option text: ``objects="4-5"``, ``sizes="0.12-0.38"`` (``""``: the two
        fixed sizes), ``background="15-230"`` (highest excluded), ``noise=16.0``.

        A single number stands for a range of one (``objects="4"`` is ``4-4``). The defaults give
        :data:`STANDARD`. Raises ``ValueError`` with a one-line message that names the option as
        ``prefix + name`` (``prefix="scene_"`` gives ``scene_objects``).
        """
        low, high = _parse_range(objects, int, f"{prefix}objects", "1-3")
        style = _checked(f"{prefix}objects", objects=(int(low), int(high)))
        if sizes.strip():
            low_f, high_f = _parse_range(sizes, float, f"{prefix}sizes", "0.12-0.38")
            style = _checked(f"{prefix}sizes", style, sizes=(float(low_f), float(high_f)))
        low, high = _parse_range(background, int, f"{prefix}background", "60-140")
        style = _checked(f"{prefix}background", style, background=(int(low), int(high)))
        return _checked(f"{prefix}noise", style, noise=float(noise))

    def to_json(self) -> dict[str, Any]:
        """The inverse of :meth:`from_json`."""
        out: dict[str, Any] = {"objects": list(self.objects), "background": list(self.background), "noise": self.noise}
        if self.sizes is not None:
            out["sizes"] = list(self.sizes)
        return out


STANDARD = SceneStyle()

_NUMBER = {int: r"\d+", float: r"\d+(?:\.\d*)?|\.\d+"}


def _parse_range(text: str, kind: type[int] | type[float], name: str, example: str) -> tuple[float, float]:
    """``(low, high)`` of ``"LOW-HIGH"`` or of a single number ``"N"`` (``(N, N)``)."""
    number = _NUMBER[kind]
    match = re.fullmatch(rf"\s*({number})\s*(?:-\s*({number})\s*)?", text)
    if match is None:
        what = "whole numbers" if kind is int else "numbers"
        raise ValueError(f"{name} must be LOW-HIGH in {what} (e.g. {example}), got {text!r}")
    low = kind(match.group(1))
    return low, kind(match.group(2)) if match.group(2) is not None else low


def _checked(name: str, base: SceneStyle = STANDARD, **change: Any) -> SceneStyle:
    """``base`` with ``change`` applied; a value out of range raises ``ValueError`` naming ``name``."""
    try:
        return replace(base, **change)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class SuitePart:
    """One named part of a test suite: ``count`` scenes of ``style`` from their own ``seed``."""

    name: str
    style: SceneStyle
    count: int
    seed: int


#: Fixed test suites off the standard distribution (split "test" of each part's seed).
SUITES: dict[str, tuple[SuitePart, ...]] = {
    "varied": (
        SuitePart("sizes", SceneStyle(sizes=(0.12, 0.38)), 250, 1001),
        SuitePart("background", SceneStyle(background=(15, 230), noise=16.0), 250, 1002),
        SuitePart("objects", SceneStyle(objects=(4, 5)), 250, 1003),
        SuitePart("mixed", SceneStyle(objects=(1, 5), sizes=(0.12, 0.38), background=(15, 230), noise=16.0), 250, 1004),
    ),
    # the standard test scenes (seed 0), whatever style a model was trained on
    "standard": (SuitePart("standard", STANDARD, 500, 0),),
}


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
    return [_chain(objects), _chain(objects[::-1])]


def _chain(objects: list[SceneObject]) -> str:
    """ "a A rel a B" for the first two, then "and a C rel it" per further object ("it": the one before)."""
    a, b = objects[0], objects[1]
    parts = [f"a {a.phrase} {relation(a, b)} a {b.phrase}"]
    for before, obj in pairwise(objects[1:]):
        parts.append(f"a {obj.phrase} {relation(obj, before)} it")
    return " and ".join(parts)


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


def make_scene(seed: int, split: str, index: int, image_size: int = 64, style: SceneStyle = STANDARD) -> Scene:
    """Render scene number ``index`` of ``split`` for ``seed`` (deterministic).

    Args:
        seed: dataset seed.
        split: ``"train"``, ``"val"`` or ``"test"`` (each split draws from its own stream).
        index: scene number within the split.
        image_size: side of the square image in pixels (>= 32).
        style: the ranges the scene is drawn from (default: the standard scenes).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    level = rng.integers(*style.background)
    tint = rng.integers(-12, 13, size=3)
    noise = rng.normal(0.0, style.noise, size=(image_size, image_size, 3))
    background = np.clip(level + tint + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(background, mode="RGB")
    draw = ImageDraw.Draw(image)

    count = int(rng.integers(style.objects[0], style.objects[1] + 1))
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = rng.choice(len(kinds), size=count, replace=False)
    objects: list[SceneObject] = []
    boxes: list[tuple[int, int, int, int]] = []
    for k in chosen:
        colour, shape = kinds[int(k)]
        for _attempt in range(50):
            size_name, fraction = _draw_size(rng, style)
            side = max(6, round(fraction * image_size))
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


def _draw_size(rng: np.random.Generator, style: SceneStyle) -> tuple[str, float]:
    """An object's size word and side (fraction of the image side)."""
    if style.sizes is None:
        name = list(SIZES)[int(rng.integers(0, len(SIZES)))]
        return name, SIZES[name]
    fraction = float(rng.uniform(*style.sizes))
    return ("small" if fraction < SMALL_BELOW else "large"), fraction


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
