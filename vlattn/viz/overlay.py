"""Attention overlays: heat maps over images, and per-word figures like Xu et al.'s (2015).

Pillow and numpy only (no torch, no matplotlib).

>>> figure = word_attention_figure(image, ["a", "red", "circle"], weights)   # weights [3, H, W]
>>> figure.save("attention.png")                                              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 18


def upsample(weights: np.ndarray, size: tuple[int, int], smooth: bool = True) -> np.ndarray:
    """An attention grid ``[h, w]`` stretched to ``size = (width, height)`` pixels, scaled to 0..1.

    ``smooth`` interpolates bilinearly (the paper's figures); otherwise each cell stays a block.
    """
    grid = np.asarray(weights, dtype=np.float32)
    if grid.ndim != 2:
        raise ValueError(f"weights must be a 2-D grid, got shape {grid.shape}")
    top = float(grid.max())
    grid = grid / top if top > 0 else np.zeros_like(grid)
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    stretched = Image.fromarray(grid, mode="F").resize(size, resample)
    return np.clip(np.asarray(stretched, dtype=np.float32), 0.0, 1.0)


def overlay(image: Image.Image, weights: np.ndarray, *, floor: float = 0.25, smooth: bool = True) -> Image.Image:
    """``image`` darkened where attention is low: ``pixel * (floor + (1 - floor) * attention)``.

    Args:
        image: any PIL image (converted to RGB).
        weights: ``[h, w]`` attention grid over the image.
        floor: brightness left where attention is 0.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    heat = upsample(weights, image.size, smooth)[:, :, None]
    shaded = rgb * (floor + (1.0 - floor) * heat)
    return Image.fromarray(shaded.clip(0, 255).astype(np.uint8), mode="RGB")


def heatmap(image: Image.Image, weights: np.ndarray, *, opacity: float = 0.55, smooth: bool = True) -> Image.Image:
    """``image`` with the attention drawn as a red-to-yellow heat layer of ``opacity``."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    heat = upsample(weights, image.size, smooth)
    colour = np.stack([255.0 * np.ones_like(heat), 255.0 * heat, 40.0 * np.ones_like(heat)], axis=-1)
    alpha = (opacity * heat)[:, :, None]
    return Image.fromarray((rgb * (1 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8), mode="RGB")


def word_attention_figure(
    image: Image.Image,
    words: Sequence[str],
    weights: np.ndarray,
    *,
    panel: int = 160,
    columns: int = 5,
    smooth: bool = True,
) -> Image.Image:
    """One labelled panel for the image, then one per word with that word's attention overlaid.

    Args:
        image: the input image (any size; each panel shows it at ``panel`` pixels wide).
        words: the caption's words.
        weights: ``[len(words), h, w]`` attention grids (extra rows, e.g. for ``<end>``, are
            drawn too, labelled ``<end>``).
        panel: panel width in pixels.
        columns: panels per row.
    """
    maps = np.asarray(weights, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"weights must be [words, h, w], got shape {maps.shape}")
    labels = list(words) + ["<end>"] * max(0, maps.shape[0] - len(words))
    height = max(1, round(panel * image.height / max(image.width, 1)))
    base = image.convert("RGB").resize((panel, height), Image.Resampling.BICUBIC)
    panels = [("", base)] + [(label, overlay(base, m, smooth=smooth)) for label, m in zip(labels, maps, strict=False)]
    rows = -(-len(panels) // columns)
    cell_h = height + LABEL_HEIGHT
    sheet = Image.new("RGB", (columns * panel if rows > 1 else len(panels) * panel, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for n, (label, picture) in enumerate(panels):
        x, y = (n % columns) * panel, (n // columns) * cell_h
        sheet.paste(picture, (x, y + LABEL_HEIGHT))
        draw.text((x + 4, y + 3), label, fill="black", font=font)
    return sheet
