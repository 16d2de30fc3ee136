"""The checkpoint's own WordPiece tokenizer, read from ``tokenizer.json`` by the ``tokenizers``
package and kept as JSON inside model files (a model file needs no tokenizer folder)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from vlattn.errors import VlattnError
from vlattn_text.pretrained.source import INSTALL_HINT, PretrainedUnavailableError
from vlattn_text.tokenizer import Encoded

#: text transforms that act on each character by itself (or on a run of combining marks), so a
#: prefix of a text is transformed into a prefix of the text's transform, its last word aside
LOCAL_NORMALIZERS = {"BertNormalizer", "Lowercase", "NFD", "NFKD", "NFC", "NFKC", "StripAccents", "Sequence"}
#: splitters into words that decide each boundary from the characters beside it
LOCAL_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Punctuation", "Sequence"}


def _types(component: Any) -> set[str]:
    """The ``type`` names of a ``tokenizer.json`` component and of the steps of a ``Sequence``."""
    if not isinstance(component, dict):
        return set()
    found = {str(component.get("type"))}
    for key in ("normalizers", "pretokenizers"):
        for step in component.get(key) or []:
            found |= _types(step)
    return found


def cuts_exactly(tokenizer_json: str) -> bool:
    """Whether texts may be cut before tokenizing (see :meth:`WordPieceTokenizer.head`): the
    normalizer and the pre-tokenizer are character-local and the model is WordPiece (one word's
    pieces depend on that word alone)."""
    try:
        spec = json.loads(tokenizer_json)
    except json.JSONDecodeError:
        return False
    model_ok = isinstance(spec.get("model"), dict) and spec["model"].get("type") == "WordPiece"
    normalizers_ok = _types(spec.get("normalizer")) <= LOCAL_NORMALIZERS
    pre_ok = _types(spec.get("pre_tokenizer")) <= LOCAL_PRE_TOKENIZERS
    return bool(model_ok and normalizers_ok and pre_ok)


class WordPieceTokenizer:
    """``text`` -> ``[CLS] pieces [SEP]`` ids and pieces, truncated to ``max_len`` (0 = the encoder's
    limit) keeping the first pieces, as BERT is trained.

    Same interface as :class:`vlattn_text.tokenizer.Tokenizer` where the task uses it:
    :meth:`encode`, :attr:`vocab_size`, :meth:`to_dict` / :meth:`from_dict`.
    """

    kind = "wordpiece"
    #: a long text is first cut to ``max_len * HEAD_CHARS_PER_PIECE + HEAD_EXTRA_CHARS`` characters
    #: (:meth:`head`), a length that holds ``max_len`` pieces of ordinary text
    HEAD_CHARS_PER_PIECE = 64
    HEAD_EXTRA_CHARS = 1024

    def __init__(self, tokenizer_json: str, max_len: int) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise PretrainedUnavailableError(
                f"reading a pretrained tokenizer needs the tokenizers package; {INSTALL_HINT}"
            ) from None
        self.tokenizer_json = tokenizer_json
        try:
            self._tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:
            raise VlattnError(f"the WordPiece tokenizer cannot be read ({exc})") from None
        self.max_len = max_len
        self._cuts = cuts_exactly(tokenizer_json)
        self._untruncated: Any = None  # the same tokenizer without truncation, made by head() when needed
        self._tokenizer.no_padding()
        if max_len:
            self._tokenizer.enable_truncation(max_len)
        else:
            self._tokenizer.no_truncation()

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size())

    @property
    def word_index(self) -> dict[str, int]:
        return dict(self._tokenizer.get_vocab())

    def head(self, text: str) -> str:
        """A start of ``text`` whose first ``max_len`` pieces are those of the whole text, so that a
        10 MB line stays cheap to encode; the whole text when it is short, when ``max_len`` is 0,
        or when the tokenizer is not known to allow cutting (:func:`cuts_exactly`).

        Why it is exact: with a character-local normalizer and pre-tokenizer, every word of a
        prefix but its last is a word of the full text, with the same pieces. A prefix of
        ``max_len * HEAD_CHARS_PER_PIECE + HEAD_EXTRA_CHARS`` characters is tokenized without
        special tokens; if its words before the last give at least ``max_len`` pieces it is
        returned, otherwise the prefix doubles (up to the whole text).
        """
        size = self.max_len * self.HEAD_CHARS_PER_PIECE + self.HEAD_EXTRA_CHARS
        if not self.max_len or not self._cuts or len(text) <= size:
            return text
        if self._untruncated is None:
            self._untruncated = type(self._tokenizer).from_str(self.tokenizer_json)
            self._untruncated.no_padding()
            self._untruncated.no_truncation()
        while size < len(text):
            words = self._untruncated.encode(text[:size], add_special_tokens=False).word_ids
            last = words[-1] if words else None
            if sum(1 for word in words if word is not None and word != last) >= self.max_len:
                return text[:size]
            size *= 2
        return text

    def encode(self, text: str) -> Encoded:
        out = self._tokenizer.encode(self.head(text))
        return Encoded(list(out.ids), list(out.tokens))

    def encode_batch(self, texts: Sequence[str]) -> list[Encoded]:
        """:meth:`encode` for many texts (the tokenizer's own threads)."""
        outs = self._tokenizer.encode_batch([self.head(text) for text in texts])
        return [Encoded(list(o.ids), list(o.tokens)) for o in outs]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_len": self.max_len, "tokenizer_json": self.tokenizer_json}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> WordPieceTokenizer:
        return cls(str(values["tokenizer_json"]), int(values.get("max_len", 0)))
