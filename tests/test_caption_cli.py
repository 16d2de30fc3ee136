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
    config = from_mapping(CaptionConfig, {"synthetic_train": 4, "synthetic_val": 1, "image_size": 32, "grid": 4,
                                          "cnn_channels": 8, "embed_dim": 8, "hidden_dim": 16})
    task = CaptionTask(config)
    task.setup_data()
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_model(path, task.build_model(), task_name="caption", config=to_dict(config),
                      artifacts=task.artifacts())


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    files = {
        "rgb": root / "scene.png", "grey": root / "grey.jpg", "cmyk": root / "print.tiff",
        "empty": root / "empty.png", "text": root / "text.jpg", "missing": root / "missing.png",
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
    for n, reason in [("missing", "no such file"), ("empty", "empty"), ("text", "not an image"),
                      ("truncated", "truncated")]:
        assert any(str(images[n]) in e and reason in e for e in errors), (n, errors)


def test_batched_captions_equal_one_at_a_time(model_file: Path, images: dict[str, Path]) -> None:
    paths = [str(images[n]) for n in ("rgb", "grey", "cmyk")]
    _, together, _ = run("caption", *paths, "--model", str(model_file), "--json")
    alone = [json.loads(run("caption", p, "--model", str(model_file), "--json")[1]) for p in paths]
    assert [r["tokens"] for r in json.loads(together)] == [r["tokens"] for r in alone]


def test_json_has_tokens_and_attention_grids(model_file: Path, images: dict[str, Path]) -> None:
    code, out, _err = run("caption", str(images["rgb"]), str(images["missing"]), "--model", str(model_file),
                         "--json", "--beam-size", "3", "--max-len", "6")
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
    code, _out, _ = run("caption", str(images["rgb"]), str(images["grey"]), "--model", str(model_file),
                       "--attention-out", str(out_dir))
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
    code, _out, err = run("caption-data", str(tmp_path / "scenes"), "--train", "3", "--val", "1", "--test", "1",
                         "--image-size", "40")
    assert code == 0, err
    data = json.loads((tmp_path / "scenes" / "dataset.json").read_text())
    assert len(data["images"]) == 5
    assert Image.open(tmp_path / "scenes" / "images" / data["images"][0]["filename"]).size == (40, 40)
    assert all(img["objects"] and len(img["sentences"]) == 2 for img in data["images"])


def test_end_to_end_process_exit_codes(model_file: Path, images: dict[str, Path]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vlattn", "caption", str(images["rgb"]), str(images["text"]),
         "--model", str(model_file)],
        capture_output=True, text=True, env=subprocess_env({"VLATTN_PLUGINS": "attention,caption"}), timeout=240,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (error,) = proc.stderr.strip().splitlines()
    assert error.startswith("vlattn: error:") and str(images["text"]) in error
    assert proc.stdout.startswith(str(images["rgb"]))
