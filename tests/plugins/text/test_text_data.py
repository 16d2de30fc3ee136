"""Text data layer: Keras-compatible tokenizer and padding, file formats, splits, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vlattn_text.data import TextDataError, label_order, read_examples, split_examples
from vlattn_text.tokenizer import OOV_TOKEN, Tokenizer, pad_sequences, split_words, truncate

SHARED_SENTIMENT = Path(__file__).resolve().parents[4] / "shared" / "data" / "sentiment"


def test_split_words_matches_keras_rules() -> None:
    assert split_words("Wow... Loved this place!") == ["wow", "loved", "this", "place"]
    # The apostrophe is not a Keras filter; tabs, dashes and brackets are.
    assert split_words("Don't\tbuy-it (ever)") == ["don't", "buy", "it", "ever"]
    assert split_words("  ") == []


def test_tokenizer_numbers_words_by_frequency_then_first_seen() -> None:
    tok = Tokenizer().fit(["The cat sat.", "The dog, the CAT!"])
    assert tok.word_index == {"the": 1, "cat": 2, "sat": 3, "dog": 4}
    encoded = tok.encode("the bird sat")
    assert encoded.ids == [1, 3] and encoded.words == ["the", "sat"]  # unknown words dropped
    assert tok.vocab_size == 5


def test_tokenizer_oov_min_freq_and_roundtrip() -> None:
    tok = Tokenizer(oov=True, min_freq=2).fit(["a a b", "a c c"])
    assert tok.word_index == {OOV_TOKEN: 1, "a": 2, "c": 3}
    assert tok.encode("b a zebra").ids == [1, 2, 1]
    again = Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again == tok


def test_pad_sequences_matches_keras_defaults() -> None:
    seqs = [[1, 2, 3, 4, 5], [6, 7]]
    assert pad_sequences(seqs, 3, padding="post") == [[3, 4, 5], [6, 7, 0]]  # truncating='pre'
    assert pad_sequences(seqs, 3) == [[3, 4, 5], [0, 6, 7]]
    assert pad_sequences(seqs, 3, truncating="post", padding="post") == [[1, 2, 3], [6, 7, 0]]
    assert truncate([1, 2, 3], 0) == (0, 3)


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_uci_files_and_folder(tmp_path: Path) -> None:
    write(tmp_path / "a_labelled.txt", "Good case, Excellent value.\t1\nBad\tcall quality.\t0\n\n")
    write(tmp_path / "b_labelled.txt", "Loved it.\t1\n")
    write(tmp_path / "README.txt", "not data")
    examples = read_examples([tmp_path])
    assert [(e.text, e.label) for e in examples] == [
        ("Good case, Excellent value.", "positive"),
        ("Bad\tcall quality.", "negative"),  # the label is after the LAST tab
        ("Loved it.", "positive"),
    ]


def test_csv_tsv_jsonl_with_columns(tmp_path: Path) -> None:
    csv_file = write(tmp_path / "d.csv", 'id,review,stars\n1,"great, really",5\n2,meh,3\n')
    tsv_file = write(tmp_path / "d.tsv", "stars\treview\n1\tawful\n")
    jsonl_file = write(tmp_path / "d.jsonl", '{"body": "fine", "y": "neutral"}\n\n{"body": "bad", "y": 0}\n')
    assert [(e.text, e.label) for e in read_examples([csv_file], text_column="review", label_column="stars")] == [
        ("great, really", "5"),
        ("meh", "3"),
    ]
    assert read_examples([tsv_file], text_column="1", label_column="0")[0].text == "awful"
    got = read_examples([jsonl_file], text_column="body", label_column="y")
    assert [(e.text, e.label) for e in got] == [("fine", "neutral"), ("bad", "0")]
    with pytest.raises(TextDataError, match="no text column 'body'"):
        read_examples([csv_file], text_column="body", label_column="stars")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no labelled examples"),
        (b"\x00\x01\x02binary", "binary"),
        (b"caf\xe9\t1\n", "not UTF-8"),
        (b"no label here\n", "expected 'sentence<TAB>label'"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = write(tmp_path / "bad.txt", content)
    with pytest.raises(TextDataError, match=message) as info:
        read_examples([path])
    assert "\n" not in str(info.value)


def test_missing_file_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(TextDataError, match="not found"):
        read_examples([tmp_path / "nope.txt"])
    with pytest.raises(TextDataError, match="no data files"):
        read_examples([tmp_path])
    bad_json = write(tmp_path / "x.jsonl", "{oops\n")
    with pytest.raises(TextDataError, match="not valid JSON"):
        read_examples([bad_json])


def test_splits_last_random_and_folds() -> None:
    from vlattn_text.data import Example

    items = [Example(str(i), "x") for i in range(10)]
    train, val = split_examples(items, val_split=0.2)
    assert [e.text for e in val] == ["8", "9"] and len(train) == 8  # Keras: the last 20%
    seen: list[str] = []
    for fold in range(5):
        train, val = split_examples(items, val_split=0.2, folds=5, fold=fold, seed=3)
        assert len(val) == 2 and not {e.text for e in val} & {e.text for e in train}
        seen += [e.text for e in val]
    assert sorted(seen, key=int) == [str(i) for i in range(10)]  # every example held out once
    shuffled, _ = split_examples(items, val_split=0.2, split="random", seed=1)
    assert [e.text for e in shuffled] != [str(i) for i in range(8)]


def test_label_order_numeric_then_text() -> None:
    assert label_order(["10", "9", "1"]) == ["1", "9", "10"]
    assert label_order(["pos", "neg", "pos"]) == ["neg", "pos"]


@pytest.mark.skipif(not SHARED_SENTIMENT.is_dir(), reason="shared sentiment data not present")
def test_uci_sentiment_files_read_as_in_the_tutorial() -> None:
    examples = read_examples([SHARED_SENTIMENT])
    assert len(examples) == 2000
    assert {e.label for e in examples} == {"negative", "positive"}
    tok = Tokenizer().fit(e.text for e in examples)
    assert list(tok.word_index)[:3] == ["the", "and", "i"]
