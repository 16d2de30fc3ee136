"""A small fuzz of what users feed the commands: text lines for ``classify``, image files for
``caption``. Whatever the input: exit status 0 or 1, no traceback, one ``vlattn: error:`` line per
refused input, and one output per input line (or per readable image), in order."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlattn.checkpoint import save_model
from vlattn.cli import build_cli
from vlattn.config import from_mapping, to_dict
from vlattn.data.text import split_lines

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Line content: letters, spaces, tabs and every character that str.splitlines() would break at.
LINE_CHARS = st.sampled_from([*"ab cd\tXY!", "\r", "\u0085", "\u2028", "\u2029", "\v", "\f", "\x1c", "é", "😀"])


def invoke(*args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(build_cli(), list(args), input=stdin)


def error_lines(result: Result) -> list[str]:
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    assert result.exit_code in (0, 1), (result.exit_code, result.stderr)
    return [line for line in result.stderr.splitlines() if line.startswith("vlattn: error:")]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained sentiment model (its labels are noise; the plumbing is real)."""
    from vlattn_text.config import TextClassifierConfig
    from vlattn_text.task import TextClassifierTask

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fuzz-text")
    data = folder / "train.txt"
    data.write_text("".join(f"{w} phone\t{i % 2}\n" for i, w in enumerate(["great", "awful"] * 8)))
    config = from_mapping(TextClassifierConfig, {"data": [str(data)], "embed_dim": 8, "hidden_size": 8})
    task = TextClassifierTask(config)
    task.setup_data()
    path = folder / "tiny.safetensors"
    return save_model(path, task.build_model(), task_name="text-classifier", config=to_dict(config),
                      artifacts=task.artifacts())  # fmt: skip


@FUZZ
@given(
    lines=st.lists(st.text(LINE_CHARS, max_size=30), max_size=12),
    ending=st.sampled_from(["\n", "\r\n"]),
    final=st.booleans(),
    bom=st.booleans(),
)
def test_classify_output_lines_up_with_input(
    text_model: Path, lines: list[str], ending: str, final: bool, bom: bool
) -> None:
    text = ending.join(lines) + (ending if final and lines else "")
    data = ("\ufeff" if bom else "").encode() + text.encode()
    result = invoke("classify", "--model", str(text_model), "--json", "-", stdin=data)
    errors = error_lines(result)
    expected = split_lines(text)
    if not any(line.strip() for line in expected):
        assert result.exit_code == 1 and len(errors) == 1 and "no text to classify" in errors[0]
        return
    assert result.exit_code == 0 and not errors, result.stderr
    records = [json.loads(line) for line in result.stdout.split("\n") if line]
    assert [r["line"] for r in records] == list(range(1, len(expected) + 1))
    for record, line in zip(records, expected, strict=True):
        assert (record["label"] is None) == (not line.strip()), (record, line)


@FUZZ
@given(data=st.binary(max_size=200))
def test_classify_any_bytes(text_model: Path, data: bytes) -> None:
    result = invoke("classify", "--model", str(text_model), "--json", "-", stdin=data)
    errors = error_lines(result)
    if result.exit_code == 1:
        assert len(errors) == 1 and not result.stdout
    else:
        assert not errors
        count = len(split_lines(data.decode("utf-8-sig")))
        assert len([line for line in result.stdout.split("\n") if line]) == count


@pytest.fixture(scope="module")
def caption_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained caption model."""
    from vlattn_caption.task import CaptionConfig, CaptionTask

    torch.manual_seed(0)
    options = {"synthetic_train": 4, "synthetic_val": 1, "image_size": 32, "grid": 4, "cnn_channels": 8,
               "embed_dim": 8, "hidden_dim": 16}  # fmt: skip
    config = from_mapping(CaptionConfig, options)
    task = CaptionTask(config)
    task.setup_data()
    path = tmp_path_factory.mktemp("fuzz-caption") / "tiny.safetensors"
    return save_model(path, task.build_model(), task_name="caption", config=to_dict(config),
                      artifacts=task.artifacts())  # fmt: skip


def image_bytes(seed: int, mode: str, size: tuple[int, int], fmt: str) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("L", size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1]))).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode == "CMYK" else fmt)  # CMYK has no PNG or BMP form
    return buffer.getvalue()


IMAGE = st.builds(
    image_bytes,
    seed=st.integers(0, 1000),
    mode=st.sampled_from(["L", "RGB", "RGBA", "P", "CMYK", "1"]),
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    fmt=st.sampled_from(["PNG", "TIFF", "BMP"]),
)


@st.composite
def image_file(draw: st.DrawFn) -> tuple[bytes, bool]:
    """File bytes and whether they hold a readable image."""
    kind = draw(st.sampled_from(["image", "truncated", "noise", "empty"]))
    if kind == "image":
        return draw(IMAGE), True
    if kind == "truncated":
        data = draw(IMAGE)
        return data[: draw(st.integers(1, max(1, len(data) // 2)))], False
    if kind == "noise":
        return b"\x89PNG" + draw(st.binary(min_size=1, max_size=64)), False
    return b"", False


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(image_file(), min_size=1, max_size=5))
def test_caption_reports_each_bad_image_and_captions_the_rest(
    caption_model: Path, tmp_path_factory: pytest.TempPathFactory, files: list[tuple[bytes, bool]]
) -> None:
    folder = tmp_path_factory.mktemp("images")
    files = [(image_bytes(0, "RGB", (8, 8), "PNG"), True), *files]  # several files: output lines name their file
    paths = []
    for i, (data, _) in enumerate(files):
        paths.append(folder / f"image{i}.png")
        paths[-1].write_bytes(data)
    result = invoke("caption", "--model", str(caption_model), "--beam-size", "1", "--max-len", "3", *map(str, paths))
    errors = error_lines(result)
    good = [str(p) for p, (_, ok) in zip(paths, files, strict=True) if ok]
    bad = [str(p) for p, (_, ok) in zip(paths, files, strict=True) if not ok]
    assert result.exit_code == (1 if bad else 0), result.stderr
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == good
    assert len(errors) == len(bad) and all(any(p in e for e in errors) for p in bad), result.stderr
