"""Reading labelled sentences: the UCI format, CSV, TSV and JSONL, and splitting them.

Formats (``fmt``):

* ``uci``: no header, one ``sentence<TAB>label`` per line (the UCI "Sentiment Labelled
  Sentences" files); the label is the text after the last TAB.
* ``csv`` / ``tsv``: a header row; the text and label columns are named (or 0-based numbers).
* ``jsonl``: one JSON object per line with the text and label keys.
* ``auto``: by extension: ``.csv``, ``.tsv``, ``.jsonl``/``.json``, anything else ``uci``.

A directory stands for every data file in it (sorted by name, README files skipped).
This module imports no torch.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vlattn.data.text import TextInputError, iter_lines, read_text, split_lines
from vlattn.errors import VlattnError

Format = Literal["auto", "uci", "csv", "tsv", "jsonl"]
DATA_SUFFIXES = (".txt", ".tsv", ".csv", ".jsonl", ".json")
UCI_LABEL_NAMES = {"0": "negative", "1": "positive"}


class TextDataError(VlattnError):
    """A data file that cannot be read as labelled text."""


@dataclass(frozen=True)
class Example:
    """One labelled text (``label`` is the label's name as written in the file, or mapped)."""

    text: str
    label: str


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files named by ``paths``; a directory gives its data files sorted by name."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = sorted(
                f
                for f in p.iterdir()
                if f.is_file() and f.suffix.lower() in DATA_SUFFIXES and not f.name.lower().startswith("readme")
            )
            if not found:
                raise TextDataError(f"no data files ({', '.join(DATA_SUFFIXES)}) in directory {p}")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise TextDataError(f"data file not found: {p}")
    if not files:
        raise TextDataError("no data files given")
    return files


def detect_format(path: Path) -> Format:
    """The format ``auto`` picks for ``path``."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".tsv":
        return "tsv"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    return "uci"


def read_text_file(path: Path) -> str:
    """The whole file as text (the shared reader's rules: UTF-8, optional BOM, no binary)."""
    try:
        return read_text(path)
    except TextInputError as exc:
        raise TextDataError(str(exc)) from None


def _column(header: list[str], column: str, path: Path, what: str) -> int:
    if column in header:
        return header.index(column)
    if column.isdigit() and int(column) < len(header):
        return int(column)
    raise TextDataError(f"{path}: no {what} column {column!r} (columns: {', '.join(header)})")


def _read_uci(text: str, path: Path) -> list[Example]:
    examples: list[Example] = []
    for number, line in ((n.number, n.text) for n in iter_lines(text)):
        if not line.strip():
            continue
        sentence, sep, label = line.rpartition("\t")
        if not sep or not label.strip():
            raise TextDataError(f"{path}:{number}: expected 'sentence<TAB>label'")
        examples.append(Example(sentence.strip(), label.strip()))
    return examples


def _read_delimited(text: str, path: Path, delimiter: str, text_column: str, label_column: str) -> list[Example]:
    # Lines keep a "\n" so that a quoted cell spanning lines keeps its line break.
    reader = csv.reader((line + "\n" for line in split_lines(text)), delimiter=delimiter)
    try:
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise TextDataError(
            f"{path}:{reader.line_num}: not valid {'CSV' if delimiter == ',' else 'TSV'} ({exc})"
        ) from None
    if not rows:
        return []
    header = [h.strip() for h in rows[0][1]]
    ti = _column(header, text_column, path, "text")
    li = _column(header, label_column, path, "label")
    examples = []
    for number, row in rows[1:]:
        if not row or not any(cell.strip() for cell in row):
            continue
        if max(ti, li) >= len(row):
            raise TextDataError(f"{path}:{number}: row has {len(row)} columns, expected {len(header)}")
        examples.append(Example(row[ti].strip(), row[li].strip()))
    return examples


def _read_jsonl(text: str, path: Path, text_key: str, label_key: str) -> list[Example]:
    examples = []
    for number, line in ((n.number, n.text) for n in iter_lines(text)):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TextDataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or text_key not in obj or label_key not in obj:
            raise TextDataError(f"{path}:{number}: expected an object with keys {text_key!r} and {label_key!r}")
        examples.append(Example(str(obj[text_key]).strip(), str(obj[label_key]).strip()))
    return examples


def read_examples(
    paths: Sequence[str | Path],
    *,
    fmt: Format = "auto",
    text_column: str = "text",
    label_column: str = "label",
) -> list[Example]:
    """Every labelled example in ``paths``, in file order.

    UCI files with labels ``0``/``1`` get the label names ``negative``/``positive``.
    """
    examples: list[Example] = []
    for path in expand_paths(paths):
        kind = detect_format(path) if fmt == "auto" else fmt
        text = read_text_file(path)
        if kind == "uci":
            found = _read_uci(text, path)
            if {e.label for e in found} <= set(UCI_LABEL_NAMES):
                found = [Example(e.text, UCI_LABEL_NAMES[e.label]) for e in found]
        elif kind in ("csv", "tsv"):
            found = _read_delimited(text, path, "," if kind == "csv" else "\t", text_column, label_column)
        else:
            found = _read_jsonl(text, path, text_column, label_column)
        if not found:
            raise TextDataError(f"{path} holds no labelled examples")
        examples.extend(found)
    return examples


def label_order(labels: Sequence[str]) -> list[str]:
    """The class list: sorted (numerically when every label is a number)."""
    unique = set(labels)
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique)


def split_examples(
    examples: Sequence[Example],
    *,
    val_split: float,
    split: Literal["last", "random"] = "last",
    folds: int = 0,
    fold: int = 0,
    seed: int = 0,
) -> tuple[list[Example], list[Example]]:
    """Split into (train, validation).

    * ``folds > 1``: k-fold cross-validation over a seeded shuffle; fold ``fold`` is validation.
    * ``split="last"``: the last ``val_split`` fraction is validation (Keras' ``validation_split``).
    * ``split="random"``: a seeded shuffle first.
    """
    items = list(examples)
    if folds > 1:
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
        held = set(order[fold::folds])
        return [e for i, e in enumerate(items) if i not in held], [e for i, e in enumerate(items) if i in held]
    if split == "random":
        random.Random(seed).shuffle(items)
    split_at = int(len(items) * (1.0 - val_split))  # Keras' rounding
    return items[:split_at], items[split_at:]
