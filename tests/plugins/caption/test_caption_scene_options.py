"""Scene style options of the caption task and ``vlattn caption-data``, and the fixed scene suites."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from vlattn_caption import synthetic
from vlattn_caption.synthetic import STANDARD, SceneStyle, SuitePart

from vlattn.config import ConfigError, from_mapping

if TYPE_CHECKING:
    from vlattn_caption.task import CaptionConfig

WEIGHTS = Path(__file__).resolve().parents[3] / "plugins" / "vlattn_caption" / "weights"
STYLE_KEYS = ("scene_objects", "scene_sizes", "scene_background", "scene_noise", "synthetic_suite")


def _config(**values: object) -> CaptionConfig:
    from vlattn_caption.task import CaptionConfig

    return from_mapping(CaptionConfig, {"synthetic_train": 6, "synthetic_val": 2, "synthetic_test": 3, **values})


@pytest.fixture
def tiny_suite(monkeypatch: pytest.MonkeyPatch) -> str:
    """A two-part suite of 3 + 2 scenes, registered as ``"tiny"`` for the test."""
    parts = (
        SuitePart("few", SceneStyle(objects=(1, 1)), 3, 7),
        SuitePart("many", SceneStyle(objects=(4, 5), sizes=(0.12, 0.2)), 2, 8),
    )
    monkeypatch.setitem(synthetic.SUITES, "tiny", parts)
    return "tiny"


# -- parsing ---------------------------------------------------------------------------------------


def test_option_defaults_are_the_standard_style() -> None:
    assert SceneStyle.from_options() == STANDARD
    assert SceneStyle.from_options("1-3", "", "60-140", 8.0) == STANDARD
    assert _config().scene_style() == STANDARD


def test_options_parse_ranges() -> None:
    style = SceneStyle.from_options("4-5", "0.12-0.38", "15-230", 16.0)
    assert style == SceneStyle(objects=(4, 5), sizes=(0.12, 0.38), background=(15, 230), noise=16.0)
    assert SceneStyle.from_options(" 2 ", " .1 - 0.3 ").objects == (2, 2)  # one number: a range of one
    assert SceneStyle.from_options(sizes=".1-0.3").sizes == (0.1, 0.3)
    assert SceneStyle.from_options(objects="5").objects == (5, 5)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"objects": "0-2"}, "objects"),
        ({"objects": "3-2"}, "objects"),
        ({"objects": "1.5-3"}, "objects"),
        ({"objects": "many"}, "objects"),
        ({"sizes": "0.5-0.6"}, "sizes"),
        ({"sizes": "-0.2"}, "sizes"),
        ({"background": "200-100"}, "background"),
        ({"background": "0-300"}, "background"),
        ({"noise": -1.0}, "noise"),
        ({"noise": float("nan")}, "noise"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_option(values: dict, named: str) -> None:
    with pytest.raises(ValueError, match=rf"^--{named}") as info:
        SceneStyle.from_options(**values, prefix="--")
    assert "\n" not in str(info.value)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^scene_objects") as info:
        _config(scene_objects="1-9")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^scene_sizes"):
        _config(scene_sizes="big")
    with pytest.raises(ConfigError, match=r"^scene_noise"):
        _config(scene_noise=500)
    with pytest.raises(ConfigError, match=r"^synthetic_suite must be '' or one of varied"):
        _config(synthetic_suite="hard")


# -- the task's scenes ---------------------------------------------------------------------------


def _shape_words(caption: list[str]) -> int:
    return sum(word in synthetic.SHAPES for word in caption)


def test_task_draws_scenes_of_its_style() -> None:
    from vlattn_caption.task import CaptionTask

    task = CaptionTask(_config(scene_objects="4-5", scene_sizes="0.12-0.2", image_size=48))
    for split in ("train", "val", "test"):
        for record in task.records(split):
            assert len(record.objects) in (4, 5)
            assert all(_shape_words(c) == len(record.objects) for c in record.captions)
            sides = [o["box"][2] - o["box"][0] for o in record.objects]
            assert all(round(0.12 * 48) <= side <= round(0.2 * 48) for side in sides)
            assert all(o["size"] == "small" for o in record.objects)  # below SMALL_BELOW


def test_default_task_scenes_are_the_standard_scenes() -> None:
    from vlattn_caption.records import synthetic_records
    from vlattn_caption.task import CaptionTask

    task = CaptionTask(_config(image_size=48))
    ours = task.records("train")
    plain = synthetic_records("train", 6, 0, 48)
    assert [r.captions for r in ours] == [r.captions for r in plain]
    assert all((a.pixels == b.pixels).all() for a, b in zip(ours, plain, strict=True))


def test_suite_replaces_the_synthetic_test_split_only(tiny_suite: str) -> None:
    from vlattn_caption.task import CaptionEvalOptions, CaptionTask
    from vlattn_caption.vocab import Vocabulary

    task = CaptionTask(_config(synthetic_suite=tiny_suite, image_size=32))
    test = task.records("test")
    assert [r.name for r in test] == ["few/test/0", "few/test/1", "few/test/2", "many/test/0", "many/test/1"]
    assert [len(r.objects) for r in test[:3]] == [1, 1, 1] and all(len(r.objects) >= 4 for r in test[3:])
    assert [r.name for r in task.records("val")] == ["synthetic/val/0", "synthetic/val/1"]
    task.vocab = Vocabulary.build(c for r in test for c in r.captions)
    assert len(task.eval_data(None, CaptionEvalOptions(split="test"))) == 5


def test_varied_suite_parts() -> None:
    names = [part.name for part in synthetic.SUITES["varied"]]
    assert names == ["sizes", "background", "objects", "mixed"]
    assert {part.count for part in synthetic.SUITES["varied"]} == {250}


def test_standard_suite_is_the_standard_test_scenes() -> None:
    from vlattn_caption.records import suite_records, synthetic_records

    (part,) = synthetic.SUITES["standard"]
    assert part.count == 500 and part.style == synthetic.STANDARD
    suite = suite_records("standard", 48)[:4]
    plain = synthetic_records("test", 4, 0, 48)
    assert [r.captions for r in suite] == [r.captions for r in plain]
    assert all((a.pixels == b.pixels).all() for a, b in zip(suite, plain, strict=True))


# -- model files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["synthetic-soft", "synthetic-hard"])
def test_bundled_model_files_load(name: str) -> None:
    from vlattn.checkpoint import load_model

    loaded = load_model(WEIGHTS / f"{name}.safetensors", expect_task="caption")
    assert loaded.task.config.synthetic_suite == ""  # type: ignore[attr-defined]


def test_a_model_file_written_before_the_scene_options_loads_with_the_standard_style(tmp_path: Path) -> None:
    from vlattn_caption.task import CaptionTask

    from vlattn.checkpoint import load_model, read_header, save_model
    from vlattn.config import to_dict

    task = CaptionTask(_config(image_size=32, cnn_channels=8, embed_dim=8, hidden_dim=8))
    task.setup_data()
    old = {k: v for k, v in to_dict(task.config).items() if k not in STYLE_KEYS}
    path = save_model(
        tmp_path / "old.safetensors", task.build_model(), task_name="caption", config=old, artifacts=task.artifacts()
    )
    assert not set(STYLE_KEYS) & set(read_header(path).config)
    config = load_model(path, expect_task="caption").task.config  # type: ignore[attr-defined]
    assert config.scene_style() == STANDARD and config.synthetic_suite == ""


# -- vlattn caption-data ---------------------------------------------------------------------------


def _run(*args: str) -> tuple[int, str, str]:
    from click.testing import CliRunner

    from vlattn.cli import build_cli

    result = CliRunner().invoke(build_cli(), list(args))
    return result.exit_code, result.stdout, result.stderr


def test_caption_data_writes_scenes_of_the_style(tmp_path: Path) -> None:
    from vlattn_caption.records import read_records

    out = tmp_path / "scenes"
    args = ["--objects", "4-5", "--sizes", "0.12-0.2", "--background", "15-230", "--noise", "16"]
    code, _out, err = _run(
        "caption-data", str(out), "--train", "3", "--val", "1", "--test", "1", "--image-size", "32", *args
    )
    assert code == 0, err
    records = read_records(out / "dataset.json")
    assert [r.split for r in records] == ["train", "train", "train", "val", "test"]
    assert all(len(r.objects) in (4, 5) and _shape_words(r.captions[0]) == len(r.objects) for r in records)
    style = SceneStyle(objects=(4, 5), sizes=(0.12, 0.2), background=(15, 230), noise=16.0)
    assert records[0].captions == [c.split() for c in synthetic.make_scene(0, "train", 0, 32, style).captions]


def test_caption_data_writes_a_suite(tmp_path: Path) -> None:
    import json

    from vlattn_caption.records import read_records, suite_records

    out = tmp_path / "varied"
    code, stdout, err = _run("caption-data", str(out), "--suite", "varied", "--image-size", "32")
    assert code == 0, err
    assert "1000 scenes" in stdout
    data = json.loads((out / "dataset.json").read_text())
    assert [(p["name"], p["count"]) for p in data["parts"]] == [
        ("sizes", 250),
        ("background", 250),
        ("objects", 250),
        ("mixed", 250),
    ]
    records = read_records(out / "dataset.json")
    assert len(records) == 1000 and {r.split for r in records} == {"test"}
    assert [img["part"] for img in data["images"]] == [r.name.split("_")[0] for r in records]
    in_memory = suite_records("varied", image_size=32)
    assert [r.captions for r in records] == [r.captions for r in in_memory]
    assert [r.objects for r in records] == [r.objects for r in in_memory]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objects", "0-9"], "--objects: object count range must lie within 1-5"),
        (["--objects", "three"], "--objects must be LOW-HIGH"),
        (["--sizes", "0.3-0.1"], "--sizes: object size range"),
        (["--background", "255-300"], "--background: background range"),
        (["--noise", "-3"], "--noise: noise must be in [0, 100]"),
        (["--suite", "hard"], "--suite must be one of varied, standard, got 'hard'"),
        (["--suite", "varied", "--objects", "2-3", "--test", "5"], "drop --train, --val, --test, --objects"),
    ],
)
def test_caption_data_bad_options_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    code, _out, err = _run("caption-data", str(tmp_path / "out"), "--train", "1", "--val", "0", "--test", "0", *args)
    assert code != 0
    assert err.startswith("vlattn: error:") and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "out" / "dataset.json").exists()
