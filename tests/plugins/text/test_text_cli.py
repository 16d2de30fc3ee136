"""``vlattn classify``: output formats, accuracy on labelled lines, stdin, and bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from vlattn_text.config import TextClassifierConfig
from vlattn_text.predict import BUNDLED_MODEL, TextClassifier
from vlattn_text.task import TextClassifierTask

from vlattn.checkpoint import save_model
from vlattn.config import from_mapping, to_dict
from vlattn.plugins import set_host

POSITIVE = ["great", "love", "excellent", "perfect"]
NEGATIVE = ["awful", "broken", "terrible", "worst"]
FILLER = ["the", "phone", "food", "was", "this", "it", "really", "is"]

torch.set_num_threads(1)


def corpus_lines(n: int = 160, seed: int = 0) -> list[str]:
    """``words<TAB>0|1``: one cue word of the class among random filler words."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        words = rng.sample(FILLER, 3)
        words.insert(rng.randrange(4), rng.choice(POSITIVE if i % 2 else NEGATIVE))
        lines.append(" ".join(words) + f"\t{i % 2}")
    return lines


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sentiment model trained in a few hundred steps on a cue-word corpus."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("text")
    data = folder / "train.txt"
    data.write_text("\n".join(corpus_lines()) + "\n")
    config = from_mapping(
        TextClassifierConfig,
        {
            "data": [str(data)],
            "embed_dim": 16,
            "hidden_size": 16,
            "split": "random",
            "subword_buckets": 500,
            "dropout": 0.0,
            "embed_dropout": 0.0,
            "word_dropout": 0.0,
        },
    )
    task = TextClassifierTask(config)
    splits = task.setup_data()
    model = task.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    items = list(splits.train)
    for step in range(80):
        batch = task.collate(items[(step * 32) % len(items) :][:32])
        loss, _ = task.training_step(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = folder / "tiny.safetensors"
    save_model(path, model, task_name="text-classifier", config=to_dict(config), artifacts=task.artifacts())
    return path


def classify(*args: str, stdin: str | bytes | None = None) -> Result:
    from vlattn.cli import build_cli

    set_host(None)
    return CliRunner().invoke(build_cli(), ["classify", *args], input=stdin)


def one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code != 0, result.output
    assert fragment in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("vlattn: warning")]
    assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr


def test_json_output_has_tokens_and_attention(model_file: Path) -> None:
    result = classify("--model", str(model_file), "--json", "the food was great", "Terrible, BROKEN phone!")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["label"] for r in records] == ["positive", "negative"]
    for record in records:
        assert {"text", "label", "score", "tokens", "attention", "probabilities"} <= set(record)
        assert len(record["attention"]) == len(record["tokens"])
        assert sum(record["attention"]) == pytest.approx(1.0, abs=1e-4)
        assert record["score"] == pytest.approx(record["probabilities"][record["label"]])
    assert records[1]["tokens"] == ["terrible", "broken", "phone"]


def test_plain_output_without_colour_and_forced_colour(model_file: Path) -> None:
    plain = classify("--model", str(model_file), "this phone is excellent")
    assert plain.exit_code == 0 and "\x1b[" not in plain.stdout
    assert plain.stdout.startswith("positive") and "excellent" in plain.stdout
    coloured = classify("--model", str(model_file), "--color", "this phone is excellent")
    assert "\x1b[48;5;" in coloured.stdout  # tokens shaded by attention


def test_file_with_labels_reports_accuracy(model_file: Path, tmp_path: Path) -> None:
    lines = corpus_lines(40)
    path = tmp_path / "labelled.txt"
    path.write_text("\n".join(lines) + "\n\n")
    result = classify("--model", str(model_file), "--file", str(path))
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 42  # 41 input lines (the last one blank), then the accuracy
    assert result.stdout.splitlines()[-2].endswith("(blank line 41)")
    assert result.stdout.splitlines()[-1].startswith("accuracy 1.0000 (40/40")
    as_json = classify("--model", str(model_file), "--json", "--file", str(path))
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(records) == 41 and records[0]["true_label"] == "negative"
    assert [r["line"] for r in records] == list(range(1, 42)) and records[-1]["label"] is None
    assert "accuracy" in as_json.stderr


def test_stdin(model_file: Path) -> None:
    result = classify("--model", str(model_file), "--json", "-", stdin="love it\n\nworst food\n")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["label"] for r in records] == ["positive", None, "negative"]
    assert [(r["source"], r["line"]) for r in records] == [("stdin", 1), ("stdin", 2), ("stdin", 3)]


def test_bad_inputs_are_one_line_errors(model_file: Path, tmp_path: Path) -> None:
    m = ("--model", str(model_file))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    one_line_error(classify(*m, "--file", str(empty)), "holds no text to classify")
    one_line_error(classify(*m, "   "), "is empty")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    one_line_error(classify(*m, "--file", str(binary)), "binary")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 great\n".encode("latin-1"))
    one_line_error(classify(*m, "--file", str(latin)), "not UTF-8")
    one_line_error(classify(*m, "--file", str(tmp_path / "missing.txt")), "not found")
    one_line_error(classify(*m, "-", stdin=b"\xff\xfe bad"), "not UTF-8")
    one_line_error(classify("--model", str(tmp_path / "nope.safetensors"), "hi"), "model file not found")
    one_line_error(classify(*m), "give TEXT")
    one_line_error(classify("--model", str(tmp_path), "hi"), "holds no best.safetensors")


def test_model_may_be_a_run_folder(model_file: Path, tmp_path: Path) -> None:
    (tmp_path / "last.safetensors").write_bytes(model_file.read_bytes())
    result = classify("--model", str(tmp_path), "--json", "love it")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["label"] == "positive"


def test_huge_line_gives_a_defined_result(model_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    path.write_text("the phone was " * 700_000 + "great\n")  # about 10 MB on one line
    result = classify("--model", str(model_file), "--json", "--file", str(path))
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["label"] == "positive" and len(record["tokens"]) == 128  # the last max_len tokens
    assert record["tokens"][-1] == "great"
    solid = tmp_path / "solid.txt"
    solid.write_text("x" * 10_000_000 + "\n")  # one 10 MB "word": n-grams stop early
    result = classify("--model", str(model_file), "--json", "--file", str(solid))
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["label"] in {"positive", "negative"} and len(record["attention"]) == 1


def test_python_api_batches_agree(model_file: Path) -> None:
    classifier = TextClassifier.load(model_file)
    texts = [" ".join(line.split("\t")[0].split()[: 1 + i % 4]) for i, line in enumerate(corpus_lines(50))]
    one_by_one = [classifier.classify([t])[0] for t in texts]
    batched = classifier.classify(texts, batch_size=7)
    for a, b in zip(one_by_one, batched, strict=True):
        assert a.label == b.label and a.tokens == b.tokens
        assert a.score == pytest.approx(b.score, abs=1e-4)


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="bundled model not built yet")
def test_bundled_model_works_out_of_the_box() -> None:
    result = classify("--json", "The battery is great and I love the screen.", "Terrible service, the worst meal ever.")
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line)["label"] for line in result.stdout.splitlines()] == ["positive", "negative"]
    assert BUNDLED_MODEL.stat().st_size < 5_000_000
