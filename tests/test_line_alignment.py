"""One output per input line: the shared line reader and every reader built on it.

Lines end at ``\\n`` only (one ``\\r`` before it is dropped); U+0085, U+2028, U+2029, ``\\v``, ``\\f``,
``\\x1c``-``\\x1e`` and a lone ``\\r`` are characters inside a line, as they are in real review data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, subprocess_env
from vlattn_caption.records import read_records
from vlattn_text.data import read_examples
from vlattn_text.predict import BUNDLED_MODEL

from vlattn.data.text import TextInputError, read_lines, split_lines
from vlattn.train.logging import MetricsLog, read_metrics

# Characters str.splitlines() breaks at but a line reader must not.
INNER_BREAKS = ["\u0085", "\u2028", "\u2029", "\v", "\f", "\x1c", "\x1d", "\x1e", "\r"]


def vlattn(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "vlattn", *args], input=stdin, capture_output=True, env=subprocess_env(), timeout=300
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def test_split_lines_rule() -> None:
    assert split_lines("") == []
    assert split_lines("a") == ["a"]
    assert split_lines("a\n") == ["a"]
    assert split_lines("a\n\n") == ["a", ""]
    assert split_lines("a\r\nb\r\n") == ["a", "b"]
    assert split_lines("a\r\r\n") == ["a\r"]  # only one \r belongs to the line end
    for char in INNER_BREAKS:
        assert split_lines(f"x{char}y\nz") == [f"x{char}y", "z"], repr(char)


def test_reader_numbers_every_line_and_refuses_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes("\ufefffirst\u2028half\n\n  \nlast".encode())
    lines = read_lines(path)
    assert [(x.number, x.text, x.blank) for x in lines] == [
        (1, "first\u2028half", False),
        (2, "", True),
        (3, "  ", True),
        (4, "last", False),
    ]
    path.write_bytes(b"ok\n\xff\n")
    with pytest.raises(TextInputError, match=r"not UTF-8 text .*line 2"):
        read_lines(path)
    path.write_bytes(b"ok\x00")
    with pytest.raises(TextInputError, match="binary"):
        read_lines(path)


def test_training_data_keeps_lines_whole(tmp_path: Path) -> None:
    uci = tmp_path / "reviews.txt"
    uci.write_text("Good\u0085 really good.\t1\r\nBad\u2028 phone.\t0\n\nMeh\x1c ok\v fine\f.\t1\n", encoding="utf-8")
    examples = read_examples([uci])
    assert [(e.text, e.label) for e in examples] == [
        ("Good\u0085 really good.", "positive"),
        ("Bad\u2028 phone.", "negative"),
        ("Meh\x1c ok\v fine\f.", "positive"),
    ]
    jsonl = tmp_path / "rows.jsonl"
    rows = [{"text": f"a{c}b", "label": "x"} for c in INNER_BREAKS]
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    assert [e.text for e in read_examples([jsonl])] == [f"a{c}b" for c in INNER_BREAKS]
    csv_file = tmp_path / "rows.csv"
    csv_file.write_bytes('\ufefftext,label\r\n"two\nlines",1\r\nsep\u2028arated,0\r\n'.encode())
    assert [(e.text, e.label) for e in read_examples([csv_file])] == [("two\nlines", "1"), ("sep\u2028arated", "0")]


def test_caption_records_accept_a_bom_and_keep_lines_whole(tmp_path: Path) -> None:
    csv_file = tmp_path / "captions.csv"
    csv_file.write_bytes(
        "\ufeffimage,caption,split\r\na.png,a red\u2028circle,train\r\nb.png,a square,val\r\n".encode()
    )
    records = read_records(csv_file)
    assert [(r.name, r.split, r.captions[0][:2]) for r in records] == [
        ("a.png", "train", ["a", "red"]),
        ("b.png", "val", ["a", "square"]),
    ]
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_bytes(
        "\ufeff".encode()
        + b"\n".join(
            json.dumps({"image": name, "caption": f"one\u0085two {name}"}, ensure_ascii=False).encode()
            for name in ("a.png", "b.png", "c.png")
        )
    )
    assert [r.name for r in read_records(jsonl)] == ["a.png", "b.png", "c.png"]
    jsonl.write_text('{"image": "a.png", "caption": "x"}\n\n{"image": "b.png"}\n', encoding="utf-8")
    with pytest.raises(Exception, match=r"captions.jsonl:3"):
        read_records(jsonl)


def test_metrics_rows_with_line_separators_survive_a_resume(tmp_path: Path) -> None:
    rows = [{"step": 1, "split": "train", "note": "a\u2028b"}, {"step": 2, "split": "val", "note": "c\u0085d"}]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + '{"step": 3, "spl', encoding="utf-8"
    )
    assert read_metrics(tmp_path) == rows  # the row cut short by a crash is dropped
    log = MetricsLog(tmp_path)
    log.resume(up_to_step=1)
    assert log.rows == rows[:1]


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="bundled sentiment model not built")
def test_classify_gives_one_output_per_input_line(tmp_path: Path) -> None:
    sentences = [f"the food{c} was great" if i % 2 else f"the service{c} was awful" for i, c in enumerate(INNER_BREAKS)]
    labels = ["1" if i % 2 else "0" for i in range(len(sentences))]
    body = [f"{s}\t{y}" for s, y in zip(sentences, labels, strict=True)]
    body.insert(3, "")  # a blank line in the middle
    data = ("\ufeff" + "\r\n".join(body) + "\r\n").encode()
    path = tmp_path / "mixed.txt"
    path.write_bytes(data)

    plain = vlattn("classify", "--file", str(path), "--no-color")
    assert plain.returncode == 0, plain.stderr
    out = plain.stdout.split("\n")
    assert out[-1] == "" and len(out) == len(body) + 2  # one line per input line, the accuracy, final newline
    assert out[3].endswith("(blank line 4)")
    assert out[-2].startswith("accuracy ") and f"/{len(sentences)} labelled lines" in out[-2]

    as_json = vlattn("classify", "--json", "-", stdin=data)
    assert as_json.returncode == 0, as_json.stderr
    records = [json.loads(line) for line in as_json.stdout.split("\n") if line]
    assert [r["line"] for r in records] == list(range(1, len(body) + 1))
    assert {r["source"] for r in records} == {"stdin"}
    assert records[3]["label"] is None and records[3]["score"] is None
    real = [r for r in records if r["label"] is not None]
    assert [r["text"] for r in real] == sentences
    assert [r["true_label"] for r in real] == ["positive" if y == "1" else "negative" for y in labels]
    correct = sum(r["label"] == r["true_label"] for r in real)
    assert f"accuracy {correct / len(real):.4f} ({correct}/{len(real)} labelled lines)" in as_json.stderr


@pytest.mark.skipif(not (SHARED_DATA / "sentiment").is_dir(), reason="reference data not available")
def test_real_review_data_keeps_every_line() -> None:
    for name in ("amazon_cells_labelled.txt", "yelp_labelled.txt"):
        path = SHARED_DATA / "sentiment" / name
        raw = path.read_bytes()
        expected = raw.count(b"\n") + (0 if raw.endswith(b"\n") else 1)
        assert len(read_examples([path])) == expected == 1000
