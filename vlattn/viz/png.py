"""PNG files written atomically, with text chunks that say who wrote them (Pillow only).

>>> save_png(picture, "final.png", text={"Software": "vlattn draw"})   # doctest: +SKIP
>>> png_text("final.png")["Software"]                                    # doctest: +SKIP
'vlattn draw'
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from vlattn.fileio import atomic_write


def save_png(image: Image.Image, path: str | Path, *, text: Mapping[str, str] | None = None) -> Path:
    """Write ``image`` as PNG to ``path`` atomically; ``text`` goes into PNG text chunks (e.g.
    ``{"Software": "vlattn draw"}``, which :func:`png_text` reads back)."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    return atomic_write(path, lambda p: image.save(p, format="PNG", pnginfo=info))


def png_text(path: str | Path) -> dict[str, str]:
    """The text chunks of the PNG file ``path``; empty for a file that is not a readable PNG."""
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                return {}
            return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}
    except Exception:  # not an image, truncated, unreadable: no text of ours
        return {}
