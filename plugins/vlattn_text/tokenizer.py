"""A Keras-compatible word tokenizer and vocabulary, saved as JSON inside model files.

The defaults reproduce ``keras.preprocessing.text.Tokenizer()``: lower-case, replace every
character of :data:`KERAS_FILTERS` by a space, split on spaces, and number words by descending
frequency from 1 (ties keep first-seen order); 0 is padding. Without an OOV token, unknown words
are dropped (as Keras does); with one, they map to index 1.

:func:`pad_sequences` matches ``keras.preprocessing.sequence.pad_sequences``: it truncates from
the front by default (``truncating="pre"``) and pads where asked.

This module imports no torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'
PAD_INDEX = 0
OOV_TOKEN = "<unk>"


def split_words(text: str, *, lower: bool = True, filters: str = KERAS_FILTERS) -> list[str]:
    """Keras' ``text_to_word_sequence``: lower-case, filters -> spaces, split on whitespace runs."""
    if lower:
        text = text.lower()
    table = str.maketrans(dict.fromkeys(filters, " "))
    return [w for w in text.translate(table).split(" ") if w]


@dataclass
class Encoded:
    """One text after tokenization: the indices the model sees and the words they came from."""

    ids: list[int]
    words: list[str]


@dataclass
class Tokenizer:
    """Words to indices, fitted on a corpus.

    Attributes:
        lower: lower-case before splitting.
        filters: characters replaced by spaces before splitting.
        min_freq: words seen fewer times in the corpus are unknown.
        max_words: keep at most this many most frequent words (0 = all).
        oov: map unknown words to ``<unk>`` (index 1) instead of dropping them.
        word_index: word -> index (filled by :meth:`fit`); 0 is padding.
    """

    lower: bool = True
    filters: str = KERAS_FILTERS
    min_freq: int = 1
    max_words: int = 0
    oov: bool = False
    word_index: dict[str, int] = field(default_factory=dict)

    def words(self, text: str) -> list[str]:
        """The words of ``text`` under this tokenizer's rules (before vocabulary lookup)."""
        return split_words(text, lower=self.lower, filters=self.filters)

    def fit(self, texts: Iterable[str]) -> Tokenizer:
        """Build :attr:`word_index` from ``texts``; returns ``self``."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(self.words(text))
        # Counter keeps first-seen order; a stable sort by count gives Keras' numbering.
        ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)
        kept = [w for w, c in ranked if c >= self.min_freq]
        if self.max_words > 0:
            kept = kept[: self.max_words]
        start = 1
        self.word_index = {}
        if self.oov:
            self.word_index[OOV_TOKEN] = 1
            start = 2
        for offset, word in enumerate(w for w in kept if w != OOV_TOKEN):
            self.word_index[word] = start + offset
        return self

    @property
    def vocab_size(self) -> int:
        """Number of embedding rows a model needs: the largest index + 1 (padding included)."""
        return max(self.word_index.values(), default=PAD_INDEX) + 1

    def encode(self, text: str) -> Encoded:
        """Indices of ``text``'s words; unknown words map to OOV or are dropped."""
        ids: list[int] = []
        kept: list[str] = []
        unknown = self.word_index.get(OOV_TOKEN) if self.oov else None
        for word in self.words(text):
            index = self.word_index.get(word, unknown)
            if index is not None:
                ids.append(index)
                kept.append(word)
        return Encoded(ids, kept)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (saved in model files)."""
        return {
            "lower": self.lower,
            "filters": self.filters,
            "min_freq": self.min_freq,
            "max_words": self.max_words,
            "oov": self.oov,
            "word_index": dict(self.word_index),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Tokenizer:
        """Rebuild a tokenizer saved by :meth:`to_dict`."""
        return cls(
            lower=bool(state.get("lower", True)),
            filters=str(state.get("filters", KERAS_FILTERS)),
            min_freq=int(state.get("min_freq", 1)),
            max_words=int(state.get("max_words", 0)),
            oov=bool(state.get("oov", False)),
            word_index={str(k): int(v) for k, v in dict(state.get("word_index", {})).items()},
        )


def truncate(ids: Sequence[int], max_len: int, truncating: Literal["pre", "post"] = "pre") -> tuple[int, int]:
    """The ``[start, stop)`` slice of ``ids`` kept at ``max_len`` (``"pre"`` drops the front)."""
    n = len(ids)
    if max_len <= 0 or n <= max_len:
        return 0, n
    return (n - max_len, n) if truncating == "pre" else (0, max_len)


def pad_sequences(
    sequences: Sequence[Sequence[int]],
    max_len: int,
    *,
    padding: Literal["pre", "post"] = "pre",
    truncating: Literal["pre", "post"] = "pre",
    value: int = PAD_INDEX,
) -> list[list[int]]:
    """Keras' ``pad_sequences``: every row cut (``truncating``) and padded (``padding``) to ``max_len``."""
    rows: list[list[int]] = []
    for seq in sequences:
        start, stop = truncate(seq, max_len, truncating)
        kept = list(seq[start:stop])
        fill = [value] * (max_len - len(kept))
        rows.append(kept + fill if padding == "post" else fill + kept)
    return rows
