"""Animated GIFs written atomically, with Pillow (no torch, no matplotlib).

>>> frames = [image_grid(batch_at_step_t, columns=4, scale=3) for batch_at_step_t in steps]  # vlattn.viz.grid
>>> save_gif(frames, "draw.gif", duration_ms=120)                                            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from vlattn.fileio import atomic_write


def save_gif(
    frames: Sequence[Image.Image],
    path: str | Path,
    *,
    duration_ms: int = 100,
    last_frame_ms: int = 1000,
    loop: int = 0,
) -> Path:
    """Write ``frames`` as an animated GIF atomically (``loop = 0``: forever).

    The last frame is held for ``last_frame_ms`` so the finished picture can be seen.
    """
    if not frames:
        raise ValueError("no frames to write")
    durations = [duration_ms] * (len(frames) - 1) + [last_frame_ms]
    first, *rest = [f if f.mode == "RGB" else f.convert("RGB") for f in frames]

    def write(p: Path) -> None:
        first.save(
            p,
            format="GIF",
            save_all=True,
            append_images=rest,
            duration=durations,
            loop=loop,
            disposal=1,
            optimize=False,
        )

    return atomic_write(path, write)
