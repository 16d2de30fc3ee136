"""The one text-line reader every vlattn command and data loader uses.

The rule, the same for ``vlattn classify``, training data, caption records and metrics logs:

* the bytes are UTF-8, optionally starting with a byte-order mark (dropped);
* a NUL byte means binary data, which is refused in one line;
* lines end at ``"\\n"`` only; one ``"\\r"`` before it (Windows line ends) is removed. Other
  characters Python's ``str.splitlines`` also breaks at (U+0085, U+2028, U+2029, ``\\v``, ``\\f``,
  ``\\x1c``-``\\x1e``, a lone ``\\r``) are ordinary characters inside a line;
* a final ``"\\n"`` ends the last line and does not start a new one;
* line numbers start at 1 and count every line, blank ones included, so a result can always be
  matched to its input line.

This module imports no torch.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vlattn.errors import VlattnError

STDIN = "-"


class TextInputError(VlattnError):
    """A text input (file or stdin) that cannot be read as UTF-8 lines."""


@dataclass(frozen=True)
class Line:
    """One input line: its 1-based number and its text (line end removed)."""

    number: int
    text: str

    @property
    def blank(self) -> bool:
        """True when the line holds only whitespace (or nothing)."""
        return not self.text.strip()


def describe(source: str | Path) -> str:
    """How messages name ``source``: ``stdin`` for ``-``, else the path."""
    return "stdin" if str(source) == STDIN else str(source)


def decode(raw: bytes, where: str) -> str:
    """``raw`` as text: UTF-8 with an optional byte-order mark; binary or other encodings are refused."""
    if b"\x00" in raw:
        raise TextInputError(f"{where} looks like binary data, not text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise TextInputError(f"{where} is not UTF-8 text (bad byte at offset {exc.start}, line {line})") from None


def _stdin_bytes() -> bytes:
    stream: BinaryIO | None = getattr(sys.stdin, "buffer", None) if sys.stdin is not None else None
    if stream is None:
        raise TextInputError("stdin is closed: pipe text into the command or give a file")
    try:
        return stream.read()
    except (OSError, ValueError) as exc:  # a closed descriptor, or a stream closed by the caller
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise TextInputError(f"cannot read stdin ({reason}): pipe text into the command or give a file") from None


def read_text(source: str | Path) -> str:
    """The whole of ``source`` (a path, or ``-`` for stdin) as text; one-line errors for bad input."""
    where = describe(source)
    if str(source) == STDIN:
        return decode(_stdin_bytes(), where)
    path = Path(source)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TextInputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise TextInputError(f"{path} is a directory, not a text file") from None
    except OSError as exc:
        raise TextInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode(raw, where)


def split_lines(text: str) -> list[str]:
    """``text`` cut at ``"\\n"`` only, one trailing ``"\\r"`` removed from each line.

    >>> split_lines("a\\u0085b\\r\\n\\nc")
    ['a\\x85b', '', 'c']
    """
    if not text:
        return []
    parts = text.split("\n")
    if parts[-1] == "":
        parts.pop()  # the final line end closes the last line
    return [p[:-1] if p.endswith("\r") else p for p in parts]


def iter_lines(text: str) -> Iterator[Line]:
    """Every line of ``text`` with its number, blank lines included."""
    for number, line in enumerate(split_lines(text), start=1):
        yield Line(number, line)


def read_lines(source: str | Path) -> list[Line]:
    """Every line of ``source`` (a path, or ``-`` for stdin) with its number, blank lines included."""
    return list(iter_lines(read_text(source)))
