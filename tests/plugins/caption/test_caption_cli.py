"""``vlattn caption`` and ``vlattn caption-data``: batching, JSON, attention figures, bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from tests.conftest import subprocess_env


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained caption model file (its captions are noise; the plumbing is real)."""
    import torch
    from vlattn_caption.task import CaptionConfig, CaptionTask

    from vlattn.checkpoint import save_model
    from vlattn.config import from_mapping, to_dict

    torch.manual_seed(0)
    config = from_mapping(
        CaptionConfig,
        {
            "synthetic_train": 4,
            "synthetic_val": 1,
            "image_size": 32,
            "grid": 4,
            "cnn_channels": 8,
            "embed_dim": 8,
            "hidden_dim": 16,
        },
    )
    task = CaptionTask(config)
    task.setup_data()
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_model(path, task.build_model(), task_name="caption", config=to_dict(config), artifacts=task.artifacts())


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    files = {
        "rgb": root / "scene.png",
        "grey": root / "grey.jpg",
        "cmyk": root / "print.tiff",
        "empty": root / "empty.png",
        "text": root / "text.jpg",
        "missing": root / "missing.png",
        "truncated": root / "cut.png",
    }
    Image.new("RGB", (300, 200), (200, 40, 40)).save(files["rgb"])
    Image.new("L", (64, 64), 90).save(files["grey"])
    Image.new("CMYK", (50, 80), (0, 255, 255, 0)).save(files["cmyk"])
    files["empty"].write_bytes(b"")
    files["text"].write_text("hello " * 50)
    data = files["rgb"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    return files


def run(*args: str) -> tuple[int, str, str]:
    from vlattn.cli import build_cli

    result = CliRunner().invoke(build_cli(), list(args))
    return result.exit_code, result.stdout, result.stderr


def test_one_image_prints_one_caption(model_file: Path, images: dict[str, Path]) -> None:
    code, out, err = run("caption", str(images["rgb"]), "--model", str(model_file))
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1 and "\t" not in out


def test_batch_with_bad_files_captions_the_good_ones(model_file: Path, images: dict[str, Path]) -> None:
    names = ["rgb", "missing", "grey", "empty", "text", "cmyk", "truncated"]
    code, out, err = run("caption", *(str(images[n]) for n in names), "--model", str(model_file), "--batch-size", "2")
    assert code == 1
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(images[n]) for n in ("rgb", "grey", "cmyk")]
    errors = err.strip().splitlines()
    assert len(errors) == 4 and "Traceback" not in err
    for n, reason in [
        ("missing", "no such file"),
        ("empty", "empty"),
        ("text", "not an image"),
        ("truncated", "truncated"),
    ]:
        assert any(str(images[n]) in e and reason in e for e in errors), (n, errors)


def test_batched_captions_equal_one_at_a_time(model_file: Path, images: dict[str, Path]) -> None:
    paths = [str(images[n]) for n in ("rgb", "grey", "cmyk")]
    _, together, _ = run("caption", *paths, "--model", str(model_file), "--json")
    alone = [json.loads(run("caption", p, "--model", str(model_file), "--json")[1]) for p in paths]
    assert [r["tokens"] for r in json.loads(together)] == [r["tokens"] for r in alone]


def test_json_has_tokens_and_attention_grids(model_file: Path, images: dict[str, Path]) -> None:
    code, out, _err = run(
        "caption",
        str(images["rgb"]),
        str(images["missing"]),
        "--model",
        str(model_file),
        "--json",
        "--beam-size",
        "3",
        "--max-len",
        "6",
    )
    assert code == 1
    good, bad = json.loads(out)
    assert good["caption"] == " ".join(good["tokens"]) and len(good["tokens"]) <= 6
    assert good["attention_grid"] == [4, 4]
    assert len(good["attention"]) == len(good["tokens"])
    for grid in good["attention"]:
        assert len(grid) == 4 and all(len(row) == 4 for row in grid)
        assert abs(sum(map(sum, grid)) - 1.0) < 1e-2
    assert "no such file" in bad["error"]


def test_attention_figures_are_written(model_file: Path, images: dict[str, Path], tmp_path: Path) -> None:
    out_dir = tmp_path / "figs"
    code, _out, _ = run(
        "caption", str(images["rgb"]), str(images["grey"]), "--model", str(model_file), "--attention-out", str(out_dir)
    )
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["grey.attention.png", "scene.attention.png"]
    figure = Image.open(out_dir / "scene.attention.png")
    assert figure.width >= 2 * 160


def test_bad_model_is_one_line(images: dict[str, Path], tmp_path: Path) -> None:
    code, _, err = run("caption", str(images["rgb"]), "--model", str(tmp_path / "nope.safetensors"))
    assert code == 1 and err.startswith("vlattn: error:") and "not found" in err and len(err.splitlines()) == 1
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    code, _, err = run("caption", str(images["rgb"]), "--model", str(junk))
    assert code == 1 and len(err.splitlines()) == 1


def test_caption_data_writes_a_trainable_dataset(tmp_path: Path) -> None:
    code, _out, err = run(
        "caption-data", str(tmp_path / "scenes"), "--train", "3", "--val", "1", "--test", "1", "--image-size", "40"
    )
    assert code == 0, err
    data = json.loads((tmp_path / "scenes" / "dataset.json").read_text())
    assert len(data["images"]) == 5
    assert Image.open(tmp_path / "scenes" / "images" / data["images"][0]["filename"]).size == (40, 40)
    assert all(img["objects"] and len(img["sentences"]) == 2 for img in data["images"])


def test_end_to_end_process_exit_codes(model_file: Path, images: dict[str, Path]) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlattn",
            "caption",
            str(images["rgb"]),
            str(images["text"]),
            "--model",
            str(model_file),
        ],
        capture_output=True,
        text=True,
        env=subprocess_env({"VLATTN_PLUGINS": "attention,caption"}),
        timeout=240,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (error,) = proc.stderr.strip().splitlines()
    assert error.startswith("vlattn: error:") and str(images["text"]) in error
    assert proc.stdout.startswith(str(images["rgb"]))


def _png_with_size(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` pixels (the pixel data is never reached)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def test_every_image_mode_is_captioned(model_file: Path, tmp_path: Path) -> None:
    import numpy as np

    files = []
    rgba = Image.new("RGBA", (40, 30), (0, 0, 255, 0))
    rgba.paste((255, 0, 0, 255), (10, 10, 20, 20))
    files.append(tmp_path / "rgba.png")
    rgba.save(files[-1])
    palette = Image.new("P", (33, 21), 1)
    palette.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    files.append(tmp_path / "palette.png")
    palette.save(files[-1], transparency=0)
    files.append(tmp_path / "grey16.png")
    grey16 = Image.fromarray(np.arange(50 * 60, dtype=np.uint16).reshape(50, 60) * 20)
    assert grey16.mode.startswith("I;16")
    grey16.save(files[-1])
    files.append(tmp_path / "bw.gif")
    Image.new("1", (17, 9), 1).save(files[-1])
    files.append(tmp_path / "cmyk.jpg")
    Image.new("CMYK", (64, 48), (255, 0, 0, 0)).save(files[-1])
    files.append(tmp_path / "tiny.png")
    Image.new("RGB", (1, 1), (0, 200, 0)).save(files[-1])
    files.append(tmp_path / "huge.jpg")
    Image.new("RGB", (3000, 2000), (30, 60, 90)).save(files[-1], quality=50)
    code, out, err = run("caption", *(str(f) for f in files), "--model", str(model_file), "--json")
    assert code == 0, err
    results = json.loads(out)
    assert [r["image"] for r in results] == [str(f) for f in files]
    assert all("error" not in r and r["caption"] == " ".join(r["tokens"]) for r in results)


def test_exif_rotation_is_applied_before_captioning(model_file: Path, tmp_path: Path) -> None:
    from vlattn_caption.predict import Captioner

    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    path = tmp_path / "rotated.jpg"
    Image.new("RGB", (120, 40), (250, 250, 250)).save(path, exif=exif.tobytes())
    (result,) = Captioner.load(model_file).caption_files([str(path)], keep_pictures=True)
    assert result.error is None and result.picture is not None
    assert result.picture.size == (40, 120)


def test_directory_and_decompression_bomb_are_one_line_errors(
    model_file: Path, images: dict[str, Path], tmp_path: Path
) -> None:
    bomb = _png_with_size(tmp_path / "bomb.png", 40000, 40000)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    code, out, err = run("caption", str(bomb), str(images["rgb"]), str(folder), "--model", str(model_file))
    assert code == 1 and "Traceback" not in err
    assert out.strip().splitlines() == [f"{images['rgb']}\t{out.split(chr(9))[1].strip()}"]
    errors = err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("vlattn: error: ") for e in errors)
    assert str(bomb) in errors[0] and "decompression bomb" in errors[0]
    assert str(folder) in errors[1] and "directory" in errors[1]


def test_all_images_bad_exits_non_zero_without_output(model_file: Path, images: dict[str, Path]) -> None:
    code, out, err = run("caption", str(images["missing"]), str(images["empty"]), "--model", str(model_file))
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 2


def test_pretrained_encoder_offline_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    code, _out, err = run(
        "train",
        "caption",
        "--encoder",
        "resnet18",
        "--pretrained",
        "--synthetic-train",
        "2",
        "--synthetic-val",
        "1",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "run"),
    )
    assert code != 0 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("vlattn: error:") and "cannot be downloaded" in line and "without --pretrained" in line


def test_model_may_be_a_run_folder(model_file: Path, images: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "best.safetensors").write_bytes(model_file.read_bytes())
    code, out, err = run("caption", str(images["rgb"]), "--model", str(run_dir), "--beam-size", "1")
    assert code == 0, err
    assert out.strip() == run("caption", str(images["rgb"]), "--model", str(model_file), "--beam-size", "1")[1].strip()
    code, _out, err = run("caption", str(images["rgb"]), "--model", str(tmp_path))
    assert code == 1 and "holds no best.safetensors or last.safetensors" in err
