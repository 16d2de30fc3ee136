"""Image grids with rectangles drawn over the tiles, with Pillow (no torch, no matplotlib).

>>> picture = image_grid(batch, columns=4, scale=3, boxes=[[(2, 2, 10, 10)]] * len(batch))   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

Box = tuple[float, float, float, float]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in ``[0, 1]`` (or uint8) as uint8, shape kept."""
    array = np.asarray(images)
    if array.dtype == np.uint8:
        return array
    return (np.clip(array, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def image_grid(
    images: np.ndarray,
    *,
    columns: int = 0,
    scale: int = 1,
    padding: int = 2,
    background: tuple[int, int, int] = (40, 40, 40),
    boxes: Sequence[Sequence[Box]] | None = None,
    box_colours: Sequence[tuple[int, int, int]] = ((255, 64, 64),),
) -> Image.Image:
    """Tile ``images`` into one RGB picture.

    Args:
        images: ``[N, H, W]`` (grey) or ``[N, H, W, C]`` with ``C`` in 1 or 3; float in ``[0, 1]``
            or uint8.
        columns: images per row (0 = about square).
        scale: each pixel becomes ``scale x scale`` pixels (nearest neighbour).
        padding: pixels between tiles.
        boxes: optional, for each image a list of ``(x0, y0, x1, y1)`` rectangles in the image's
            own pixel coordinates; the ``k``-th rectangle of an image uses ``box_colours[k]``
            (cycling). Rectangles are clipped to their tile.
    """
    array = to_uint8(images)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or array.shape[0] == 0:
        raise ValueError(f"images must be [N, H, W] or [N, H, W, 1|3], got shape {np.shape(images)}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    n, h, w, _ = array.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    tile_w, tile_h = w * scale, h * scale
    canvas = Image.new(
        "RGB",
        (columns * tile_w + (columns + 1) * padding, rows * tile_h + (rows + 1) * padding),
        background,
    )
    pen = ImageDraw.Draw(canvas)
    for index in range(n):
        row, col = divmod(index, columns)
        left = padding + col * (tile_w + padding)
        top = padding + row * (tile_h + padding)
        tile = Image.fromarray(array[index], mode="RGB")
        if scale != 1:
            tile = tile.resize((tile_w, tile_h), Image.Resampling.NEAREST)
        canvas.paste(tile, (left, top))
        for k, box in enumerate(boxes[index] if boxes is not None else ()):
            colour = box_colours[k % len(box_colours)]
            _rectangle(pen, box, left, top, tile_w, tile_h, scale, colour)
    return canvas


def _rectangle(
    pen: ImageDraw.ImageDraw,
    box: Box,
    left: int,
    top: int,
    width: int,
    height: int,
    scale: int,
    colour: tuple[int, int, int],
) -> None:
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite([x0, y0, x1, y1])):
        return
    # pixel centres are at (i + 0.5) * scale inside the tile
    corners = [
        min(max(left + (x0 + 0.5) * scale, left), left + width - 1),
        min(max(top + (y0 + 0.5) * scale, top), top + height - 1),
        min(max(left + (x1 + 0.5) * scale, left), left + width - 1),
        min(max(top + (y1 + 0.5) * scale, top), top + height - 1),
    ]
    if corners[2] < corners[0] or corners[3] < corners[1]:
        return
    pen.rectangle(corners, outline=colour, width=max(1, scale // 3))
