"""``--model``: one resolution (file, run folder, bundled name) and one option for every plugin command."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import vlattn_caption.predict
import vlattn_draw.cli
import vlattn_text.predict
from click.testing import CliRunner, Result
from PIL import Image

from vlattn.checkpoint import save_model
from vlattn.cli import build_cli
from vlattn.config import from_mapping, to_dict
from vlattn.errors import BundledModelMissingError, ModelFileError
from vlattn.model_files import BundledModels, model_option, resolve_model_file
from vlattn.plugins import set_host, task_registry

MISSING_BUNDLED = re.compile(
    r"^vlattn: error: the bundled (?P<task>\S+) model '(?P<name>[^']+)' is missing \((?P<path>[^()]+)\); "
    r"(?:train it with scripts/\S+\.py or )?pass --model PATH$"
)


@pytest.fixture(scope="module")
def draw_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vlattn_draw.task import DrawConfig, DrawTask

    config = from_mapping(DrawConfig, {"steps": 2, "enc_size": 8, "dec_size": 8, "z_size": 2})
    task = DrawTask(config)
    path = tmp_path_factory.mktemp("draw") / "draw.safetensors"
    return save_model(
        path, task.build_model(), task_name=DrawTask.name, config=to_dict(config), artifacts=task.artifacts()
    )


@pytest.fixture(scope="module")
def caption_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vlattn_caption.task import CaptionConfig, CaptionTask

    config = from_mapping(
        CaptionConfig,
        {
            "synthetic_train": 2,
            "synthetic_val": 1,
            "image_size": 32,
            "grid": 4,
            "cnn_channels": 8,
            "embed_dim": 8,
            "hidden_dim": 8,
        },
    )
    task = CaptionTask(config)
    task.setup_data()
    path = tmp_path_factory.mktemp("caption") / "caption.safetensors"
    return save_model(
        path, task.build_model(), task_name=CaptionTask.name, config=to_dict(config), artifacts=task.artifacts()
    )


@pytest.fixture
def bundled(draw_file: Path, tmp_path: Path) -> BundledModels:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "tiny.safetensors").write_bytes(draw_file.read_bytes())
    return BundledModels(
        folder,
        {"tiny": "a tiny model", "gone": "not installed"},
        default="tiny",
        remedy="train it with scripts/make_tiny.py",
    )


def invoke(*args: str) -> Result:
    set_host(None)
    return CliRunner().invoke(build_cli(), list(args))


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("vlattn: error: ")
    return line


def test_a_file_a_run_folder_and_a_bundled_name(draw_file: Path, bundled: BundledModels, tmp_path: Path) -> None:
    assert resolve_model_file(draw_file, task="draw") == draw_file
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.safetensors").write_bytes(draw_file.read_bytes())
    assert resolve_model_file(run, task="draw") == run / "last.safetensors"
    (run / "best.safetensors").write_bytes(draw_file.read_bytes())
    assert resolve_model_file(str(run), task="draw") == run / "best.safetensors"
    assert resolve_model_file(None, task="draw", bundled=bundled) == bundled.path("tiny")
    assert resolve_model_file("tiny", task="draw", bundled=bundled) == bundled.path("tiny")


def test_an_existing_path_wins_over_a_bundled_name(
    draw_file: Path, bundled: BundledModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("gone").mkdir()
    (Path("gone") / "best.safetensors").write_bytes(draw_file.read_bytes())
    assert resolve_model_file("gone", task="draw", bundled=bundled) == Path("gone") / "best.safetensors"


def test_refusals_are_model_file_errors(draw_file: Path, bundled: BundledModels, tmp_path: Path) -> None:
    with pytest.raises(BundledModelMissingError, match=r"the bundled draw model 'gone' is missing .*make_tiny"):
        resolve_model_file("gone", task="draw", bundled=bundled)
    with pytest.raises(ModelFileError, match="is a 'draw' model, not a 'caption' model"):
        resolve_model_file(draw_file, task="caption")
    with pytest.raises(ModelFileError, match="no caption model given"):
        resolve_model_file(None, task="caption")
    with pytest.raises(ModelFileError, match=r"holds no best\.safetensors or last\.safetensors"):
        resolve_model_file(tmp_path, task="draw")
    with pytest.raises(ModelFileError, match="model file not found"):
        resolve_model_file("tiny", task="draw")  # a bundled name means nothing without the bundled models


def test_every_plugin_command_has_the_same_model_option() -> None:
    root = build_cli()
    for name in ("caption", "classify", "draw"):
        (option,) = [p for p in root.commands[name].params if p.name == "model"]
        assert option.opts == ["--model", "-m"] and option.metavar == "PATH", name
        assert "training run folder (its best, else last, model)" in (option.help or ""), name
        assert "bundled model:" in (option.help or "") and "(the default" in (option.help or ""), name
    assert callable(model_option("x"))


def test_task_classes_name_their_registered_task() -> None:
    set_host(None)
    for spec in task_registry():
        if spec.plugin in {"caption", "draw", "text"}:
            assert spec.load().name == spec.name


def test_a_model_of_another_task_is_refused_in_one_line(draw_file: Path, caption_file: Path, tmp_path: Path) -> None:
    picture = tmp_path / "picture.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(picture)
    line = one_line_error(invoke("draw", "--model", str(caption_file), "--out", str(tmp_path / "x.gif")))
    assert f"{caption_file} is a 'caption' model, not a 'draw' model" in line
    line = one_line_error(invoke("caption", str(picture), "--model", str(draw_file)))
    assert f"{draw_file} is a 'draw' model, not a 'caption' model" in line
    line = one_line_error(invoke("classify", "--model", str(draw_file), "great phone"))
    assert f"{draw_file} is a 'draw' model, not a 'text-classifier' model" in line


def test_a_missing_bundled_model_reads_the_same_in_every_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "no-weights"
    for module in (vlattn_caption.predict, vlattn_draw.cli, vlattn_text.predict):
        monkeypatch.setattr(module, "BUNDLED", dataclasses.replace(module.BUNDLED, folder=empty))
    picture = tmp_path / "picture.png"
    Image.new("RGB", (32, 32)).save(picture)
    for task, name, args in (
        ("caption", "synthetic-soft", ["caption", str(picture)]),
        ("draw", "draw_mnist", ["draw", "--out", str(tmp_path / "x.gif")]),
        ("text-classifier", "sentiment", ["classify", "great phone"]),
        ("text-classifier", "sentiment-minilm", ["classify", "--model", "sentiment-minilm", "great phone"]),
    ):
        line = one_line_error(invoke(*args))
        match = MISSING_BUNDLED.match(line)
        assert match is not None, line
        assert (match["task"], match["name"]) == (task, name)
        assert Path(match["path"]) == empty / f"{name}.safetensors"


def test_draw_loads_a_bundled_name(draw_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "mine.safetensors").write_bytes(draw_file.read_bytes())
    monkeypatch.setattr(vlattn_draw.cli, "BUNDLED", BundledModels(folder, {"mine": "tiny"}, default="mine"))
    out = tmp_path / "m.gif"
    result = invoke("draw", "--model", "mine", "--num", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.is_file()
