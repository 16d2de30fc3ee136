"""Caption tokenisation and the word vocabulary saved inside a captioning model file."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS: tuple[str, ...] = (PAD, START, END, UNK)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case words of a caption: ``"A red Circle, left-of"`` -> ``["a", "red", "circle", "left", "of"]``."""
    return _WORD.findall(text.lower())


@dataclass
class Vocabulary:
    """Words <-> ids. Ids 0..3 are ``<pad>``, ``<start>``, ``<end>``, ``<unk>``."""

    words: list[str]

    def __post_init__(self) -> None:
        if tuple(self.words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}")
        self.index = {w: i for i, w in enumerate(self.words)}

    pad_id = 0
    start_id = 1
    end_id = 2
    unk_id = 3

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_freq: int = 1, max_size: int = 0) -> Vocabulary:
        """Vocabulary of the tokenised ``captions``: words seen at least ``min_freq`` times, most
        frequent first (ties alphabetical), at most ``max_size`` words besides specials (0 = all)."""
        counts = Counter(w for caption in captions for w in caption)
        kept = sorted(
            (w for w, n in counts.items() if n >= min_freq and w not in SPECIALS), key=lambda w: (-counts[w], w)
        )
        if max_size > 0:
            kept = kept[:max_size]
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: Sequence[str], max_len: int = 0) -> list[int]:
        """``<start> w1 .. wn <end>`` as ids; unknown words become ``<unk>``; at most ``max_len``
        words are kept (0 = all)."""
        if max_len > 0:
            tokens = tokens[:max_len]
        return [self.start_id, *(self.index.get(w, self.unk_id) for w in tokens), self.end_id]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of ``ids`` up to the first ``<end>``, skipping ``<start>`` and ``<pad>``."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            words.append(self.words[i] if 0 <= i < len(self.words) else UNK)
        return words

    def to_json(self) -> dict[str, Any]:
        return {"words": list(self.words)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Vocabulary:
        return cls(list(data["words"]))
