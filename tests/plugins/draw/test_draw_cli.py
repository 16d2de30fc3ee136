"""``vlattn draw``: GIF and PNG output, notes, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from vlattn_draw.cli import BUNDLED_MODEL
from vlattn_draw.task import DrawConfig, DrawTask

from vlattn.checkpoint import save_model
from vlattn.cli import build_cli
from vlattn.config import from_mapping, to_dict


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = from_mapping(DrawConfig, {"steps": 4, "enc_size": 16, "dec_size": 16, "z_size": 4})
    task = DrawTask(config)
    model = task.build_model()
    with torch.no_grad():  # an untrained model writes nothing; give it random writes so frames differ
        model.dec_out.weight[: model.shape.write_size].normal_(0.0, 1.0)
        model.dec_out.bias[: model.shape.write_size].normal_(0.0, 1.0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_model(path, model, task_name="draw", config=to_dict(config), artifacts=task.artifacts())


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of ``vlattn train draw``: two epochs of a tiny model on random binary images."""
    rng = np.random.default_rng(0)
    data = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(data, **{f"X_{k}": (rng.random((n, 784)) < 0.2).astype(np.float32)
                      for k, n in (("train", 32), ("valid", 16), ("test", 16))})  # fmt: skip
    out = tmp_path_factory.mktemp("runs") / "draw"
    tiny = ["--steps", "3", "--enc-size", "8", "--dec-size", "8", "--z-size", "2", "--read-n", "2", "--write-n", "2"]
    result = CliRunner().invoke(
        build_cli(),
        ["train", "draw", "--data-path", str(data), *tiny, "--epochs", "2", "--batch-size", "16", "--threads", "1",
         "--quiet", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def run(*args: str):
    return CliRunner().invoke(build_cli(), ["draw", *args])


def gif_frames(path: Path) -> int:
    with Image.open(path) as img:
        return img.n_frames


def test_samples_gif_and_png(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.gif"
    result = run("--model", str(model_file), "--num", "6", "--boxes", "--out", str(out), "--seed", "2")
    assert result.exit_code == 0, result.output
    assert gif_frames(out) == 4
    with Image.open(out.with_suffix(".png")) as png:
        assert png.size[0] > 3 * 28 and png.size[1] > 2 * 28
    assert "note:" not in result.output


def test_other_step_counts_run_and_say_how_they_differ(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.gif"
    fewer = run("--model", str(model_file), "--steps", "2", "--num", "2", "--out", str(out))
    assert fewer.exit_code == 0 and gif_frames(out) == 2
    assert "trained for T=4" in fewer.output and "fewer" in fewer.output
    more = run("--model", str(model_file), "--steps", "7", "--num", "2", "--out", str(out))
    assert more.exit_code == 0 and gif_frames(out) == 7
    assert "beyond T" in more.output


def test_model_may_be_a_run_folder(run_folder: Path, tmp_path: Path) -> None:
    from_folder = run("--model", str(run_folder), "--num", "4", "--out", str(tmp_path / "folder.gif"))
    assert from_folder.exit_code == 0, from_folder.output
    assert gif_frames(tmp_path / "folder.gif") == 3
    from_file = run("--model", str(run_folder / "best.safetensors"), "--num", "4", "--out", str(tmp_path / "file.gif"))
    assert from_file.exit_code == 0, from_file.output
    assert (tmp_path / "folder.gif").read_bytes() == (tmp_path / "file.gif").read_bytes()
    evaluated = CliRunner().invoke(build_cli(), ["eval", str(run_folder), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["model"] == str(run_folder / "best.safetensors")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    result = run("--model", str(empty), "--out", str(tmp_path / "x.gif"))
    assert result.exit_code == 1 and "holds no best.safetensors or last.safetensors" in result.output
    assert result.output.strip().count("\n") == 0


def test_reconstruct_an_image(model_file: Path, tmp_path: Path) -> None:
    picture = tmp_path / "digit.png"
    Image.new("L", (40, 40), 255).save(picture)
    out = tmp_path / "r.gif"
    result = run("--model", str(model_file), "--reconstruct", str(picture), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert gif_frames(out) == 4
    assert "reconstruction" in result.output


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--steps", "0"], "Invalid value for '--steps'", 2),
        (["--steps", "-4"], "Invalid value for '--steps'", 2),
        (["--steps", "1000000"], "Invalid value for '--steps'", 2),
        (["--num", "0"], "Invalid value for '--num'", 2),
        (["--num", "100000"], "Invalid value for '--num'", 2),
        (["--num", "1024", "--steps", "1000"], "GiB of GIF frames", 2),
        (["--out", "/nonexistent-folder/x.gif"], "does not exist", 1),
        (["--out", "picture.png"], "must name a .gif", 2),
        (["--reconstruct", "/nonexistent.png"], "no such file", 1),
    ],
)
def test_bad_arguments_give_one_line_errors(
    model_file: Path, args: list[str], message: str, code: int, tmp_path: Path
) -> None:
    defaults = ["--model", str(model_file)]
    if "--out" not in args:
        defaults += ["--out", str(tmp_path / "x.gif")]
    result = run(*defaults, *args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0


def test_corrupt_or_foreign_model_files(tmp_path: Path) -> None:
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    result = run("--model", str(corrupt), "--out", str(tmp_path / "x.gif"))
    assert result.exit_code != 0 and "vlattn: error:" in result.output and "Traceback" not in result.output
    missing = run("--model", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "x.gif"))
    assert missing.exit_code != 0 and "not found" in missing.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(model_file: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run("--model", str(model_file), "--out", str(locked / "x.gif"))
    assert result.exit_code != 0 and "not writable" in result.output


def test_output_under_a_file_is_an_error(model_file: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("--model", str(model_file), "--out", str(blocker / "x.gif"))
    assert result.exit_code != 0 and "vlattn: error:" in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0
    folder = tmp_path / "taken.gif"
    folder.mkdir()
    result = run("--model", str(model_file), "--out", str(folder))
    assert result.exit_code != 0 and "is a directory" in result.output


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="bundled weights not built")
def test_bundled_model_draws_out_of_the_box(tmp_path: Path) -> None:
    out = tmp_path / "b.gif"
    result = run("--steps", "10", "--num", "4", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert gif_frames(out) == 10


def test_plugin_and_command_modules_import_no_torch() -> None:
    code = "import sys, vlattn_draw.plugin, vlattn_draw.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
