"""Safe image loading: every common mode becomes upright 8-bit RGB; bad files fail in one line."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlattn.data.images import ImageLoadError, load_image, to_rgb
from vlattn.errors import VlattnError


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "1", "RGBA", "LA", "P", "CMYK", "I", "F", "RGB"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    base = Image.new("RGB", (40, 30), (200, 30, 30))
    img = base.convert(mode)
    suffix = ".tiff" if mode in ("CMYK", "F", "I") else ".png"
    out = load_image(_save(img, tmp_path / f"x{suffix}"))
    assert out.mode == "RGB"
    assert out.size == (40, 30)


def test_sixteen_bit_grey_is_rescaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 8, dtype=np.uint16).reshape(8, 64)
    path = _save(Image.fromarray(ramp), tmp_path / "deep.png")
    out = np.asarray(load_image(path))
    assert out.shape == (8, 64, 3)
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255
    # clipping at 255 would make almost every pixel white; rescaling keeps a ramp
    assert 100 < out[..., 0].mean() < 155


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    out = load_image(_save(img, tmp_path / "alpha.png"))
    assert out.getpixel((5, 5)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (255, 0, 0)


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    out = load_image(_save(img, tmp_path / "pal.png", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (0, 255, 0)


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = _save(img, tmp_path / "rot.jpg", exif=exif.tobytes())
    assert Image.open(path).size == (40, 20)
    assert load_image(path).size == (20, 40)


def test_any_size_loads(tmp_path: Path) -> None:
    assert load_image(_save(Image.new("RGB", (1, 1)), tmp_path / "tiny.png")).size == (1, 1)
    assert load_image(_save(Image.new("L", (3000, 7)), tmp_path / "wide.png")).size == (3000, 7)


def test_first_frame_of_animation(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert load_image(path).getpixel((2, 2))[0] > 200


def _bad(path: Path) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert isinstance(info.value, VlattnError)
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in _bad(tmp_path / "nope.jpg")


def test_directory(tmp_path: Path) -> None:
    assert "directory" in _bad(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert "empty" in _bad(path)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("just some text, not pixels\n" * 20)
    assert "not an image" in _bad(path)


def test_truncated_image(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert "truncated or corrupt" in _bad(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = _save(Image.new("L", (400, 300)), tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(path, max_pixels=100_000)
    assert load_image(path, max_pixels=120_000).size == (400, 300)


def test_pillow_bomb_limit_is_also_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("L", (200, 200)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert "decompression bomb" in _bad(path)


def test_to_rgb_of_float_image_uses_its_range() -> None:
    arr = np.array([[-1.0, 0.0], [1.0, 3.0]], dtype=np.float32)
    out = np.asarray(to_rgb(Image.fromarray(arr, mode="F")))
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255


def test_image_tensor_is_uint8_channels_first_at_the_size_asked() -> None:
    from vlattn.data.images import image_tensor

    picture = Image.new("RGB", (30, 20), (200, 100, 50))
    square = image_tensor(picture, 16)
    assert square.shape == (3, 16, 16) and str(square.dtype) == "torch.uint8" and square.is_contiguous()
    assert square[:, 5, 5].tolist() == [200, 100, 50]
    assert image_tensor(picture, (8, 12)).shape == (3, 8, 12)  # (height, width)
    grey = image_tensor(picture, (20, 30), channels=1)
    assert grey.shape == (1, 20, 30)
    assert grey[0, 0, 0].item() == np.asarray(picture.convert("L"))[0, 0]
    unchanged = np.asarray(picture).transpose(2, 0, 1)
    assert (image_tensor(picture, (20, 30)).numpy() == unchanged).all()  # the right size is not resampled
    with pytest.raises(ValueError, match="channels"):
        image_tensor(picture, 8, channels=4)


def test_image_tensor_takes_any_mode_like_load_image(tmp_path: Path) -> None:
    from vlattn.data.images import image_tensor, load_image_tensor

    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert image_tensor(clear, 4)[:, 0, 0].tolist() == [255, 255, 255]  # composited on white, as to_rgb does
    path = _save(Image.new("L", (10, 6), 90), tmp_path / "grey.png")
    loaded = load_image_tensor(path, 5, channels=1)
    assert loaded.shape == (1, 5, 5) and set(loaded.flatten().tolist()) == {90}
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image_tensor(tmp_path / "missing.png", 5)
