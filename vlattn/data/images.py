"""Safe image loading for every vision plugin: any size, any common mode, clear errors.

:func:`load_image` returns an 8-bit RGB :class:`PIL.Image.Image` the right way up, whatever the
file holds (greyscale ``L``/``1``, ``RGBA``/``LA`` and palette images with transparency, ``CMYK``,
16-bit and floating-point greyscale, EXIF-rotated photographs, the first frame of an animation).
A file that cannot be used raises :class:`ImageLoadError` with a one-line message naming the file
and the reason: missing, a directory, empty, unreadable, not an image, truncated or corrupt, or
so large that decoding it would be a decompression bomb.

:func:`image_tensor` turns a picture into a model's input tensor, and :func:`load_image_tensor`
does both steps for a file.

This module imports no torch at import time (:func:`image_tensor` imports it when called).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlattn.errors import VlattnError

if TYPE_CHECKING:
    import torch

#: Largest image (width x height) decoded by default: 16384 x 16384, far above any photograph.
DEFAULT_MAX_PIXELS = 16384 * 16384

#: Colour that transparent pixels are composited onto.
BACKGROUND = (255, 255, 255)


class ImageLoadError(VlattnError):
    """An image file that cannot be loaded; the message is one line naming the file."""


def check_image_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a :class:`Path` if it names a non-empty readable file, else raise."""
    p = Path(path)
    if p.is_dir():
        raise ImageLoadError(f"{p}: is a directory, not an image")
    if not p.exists():
        raise ImageLoadError(f"{p}: no such file")
    if not p.is_file():
        raise ImageLoadError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise ImageLoadError(f"{p}: file is empty")
    if not os.access(p, os.R_OK):
        raise ImageLoadError(f"{p}: permission denied")
    return p


def load_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``path`` and return it as an upright 8-bit RGB image.

    Args:
        path: an image file in any format Pillow reads.
        max_pixels: refuse images with more pixels than this before decoding them.

    Raises:
        ImageLoadError: for any file that cannot be used (the message says why, in one line).
    """
    p = check_image_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        f"{p}: image is {width}x{height} = {width * height} pixels, over the limit "
                        f"of {max_pixels} (refused as a possible decompression bomb)"
                    )
                img.seek(0)
                img.load()
                upright = ImageOps.exif_transpose(img)
                return to_rgb(upright if upright is not None else img)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"{p}: refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{p}: not an image file (or a format Pillow cannot read)") from None
    except PermissionError:
        raise ImageLoadError(f"{p}: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageLoadError(f"{p}: truncated or corrupt image ({reason})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an image of any Pillow mode to 8-bit ``RGB``.

    Transparency is composited onto white; 16-bit and 32-bit integer greyscale is rescaled from
    its full range (not clipped at 255); floating-point greyscale is rescaled from its min..max.
    """
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _wide_grey_to_rgb(img)
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def _wide_grey_to_rgb(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if arr.dtype.kind == "f" or img.mode == "F":
        arr = arr.astype(np.float64)
        lo, hi = np.nanmin(arr), np.nanmax(arr)
        scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        scaled = np.nan_to_num(scaled)
    else:
        arr = arr.astype(np.float64)
        top = 255.0 if arr.max(initial=0) <= 255 else 65535.0 if arr.max() <= 65535 else float(arr.max())
        scaled = np.clip(arr, 0, None) / top
    grey = (scaled * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def image_tensor(image: Image.Image, size: int | tuple[int, int], *, channels: int = 3) -> torch.Tensor:
    """``image`` as a model's input: a ``uint8 [C, H, W]`` tensor (0..255).

    Args:
        image: a picture of any mode (see :func:`to_rgb`; ``channels=1`` then takes its luminance).
        size: the side of a square output, or ``(height, width)``; the picture is resized
            bilinearly (not at all when it already has that size).
        channels: 3 for RGB, 1 for greyscale.
    """
    import torch

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    height, width = (size, size) if isinstance(size, int) else size
    picture = _in_mode(image, "RGB" if channels == 3 else "L")
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.array(picture, dtype=np.uint8, copy=True))
    return pixels.unsqueeze(0) if channels == 1 else pixels.permute(2, 0, 1).contiguous()


def load_image_tensor(
    path: str | os.PathLike[str],
    size: int | tuple[int, int],
    *,
    channels: int = 3,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """:func:`load_image` then :func:`image_tensor`: the file as ``uint8 [C, H, W]``."""
    return image_tensor(load_image(path, max_pixels=max_pixels), size, channels=channels)


def _in_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` as 8-bit ``RGB`` or ``L`` (the same object when it already is)."""
    if image.mode == mode:
        return image
    rgb = to_rgb(image)
    return rgb if mode == "RGB" else rgb.convert("L")
