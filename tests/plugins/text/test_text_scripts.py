"""Smoke runs of the text scripts (results table, bundled-model recipe) on a tiny UCI-format corpus."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from vlattn_text.predict import TextClassifier

from vlattn.checkpoint import read_header

SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"


def load_script(name: str) -> ModuleType:
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A folder with one UCI file: 60 short sentences, a cue word decides the label."""
    rng = random.Random(0)
    lines = []
    for i in range(60):
        cue = rng.choice(["great", "love", "good"] if i % 2 else ["bad", "awful", "broken"])
        lines.append(f"the {rng.choice(['phone', 'food', 'staff'])} was {cue}\t{i % 2}")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "tiny_labelled.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_results_script_prints_the_tables(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    results = load_script("text_results")
    code = results.main(
        [
            "--data",
            str(corpus),
            "--models",
            "tutorial-attention,ours",
            "--seeds",
            "1",
            "--folds",
            "2",
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(tmp_path / "summary.json"),
            "--baselines",
            "tfidf",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| tutorial-attention |" in out and "| ours |" in out
    assert "| baseline: tfidf | - | " in out  # cross-validated on the same two folds
    assert "* ours, CV folds: " in out and "Heaviest attention tokens, ours" in out
    assert (tmp_path / "summary.json").is_file()


def test_sentiment_script_writes_a_float16_model(corpus: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    train = load_script("train_text_sentiment")
    out = tmp_path / "sentiment.safetensors"
    assert train.main(["--data", str(corpus), "--out", str(out), "--epochs", "1"]) == 0
    header = read_header(out)
    assert header.info["stored_dtype"] == "float16" and header.info["recipe"] == "ours-ensemble3"
    prediction = TextClassifier.load(out).classify(["the food was great"])[0]
    assert prediction.attention is not None and len(prediction.attention) == 4


def test_transfer_script_trains_on_one_domain_and_tests_on_another(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sklearn")
    torch.set_num_threads(1)
    source = (corpus / "tiny_labelled.txt").read_text().splitlines()
    other = [line.replace("phone", "pizza").replace("staff", "waiter") for line in source]
    (corpus / "other_labelled.txt").write_text("\n".join(other[:30]) + "\n")
    transfer = load_script("text_transfer")
    code = transfer.main(
        [
            "--data", str(corpus), "--directions", "tiny:other", "--models", "ngram",
            "--baselines", "tfidf", "--work", str(tmp_path / "work"),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| tiny -> other |")]
    assert [row.split("|")[2].strip() for row in rows] == ["ngram", "tfidf"]
    assert all(float(row.split("|")[3]) >= 90.0 for row in rows)  # the cue words carry over
    with pytest.raises(SystemExit, match="no tiny or missing file"):
        transfer.main(["--data", str(corpus), "--directions", "tiny:missing", "--models", "", "--baselines", ""])
