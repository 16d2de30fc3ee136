"""The checkpoint's own WordPiece tokenizer, read from ``tokenizer.json`` by the ``tokenizers``
package and kept as JSON inside model files (a model file needs no tokenizer folder)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlattn.errors import VlattnError
from vlattn_text.pretrained.source import INSTALL_HINT, PretrainedUnavailableError
from vlattn_text.tokenizer import Encoded


class WordPieceTokenizer:
    """``text`` -> ``[CLS] pieces [SEP]`` ids and pieces, truncated to ``max_len`` (0 = the encoder's
    limit) keeping the first pieces, as BERT is trained.

    Same interface as :class:`vlattn_text.tokenizer.Tokenizer` where the task uses it:
    :meth:`encode`, :attr:`vocab_size`, :meth:`to_dict` / :meth:`from_dict`.
    """

    kind = "wordpiece"

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
        """The start of ``text`` that holds the first ``max_len`` pieces (the rest is cut away before
        tokenizing, so a 10 MB line stays cheap): ``max_len * 64 + 1024`` characters."""
        return text[: self.max_len * 64 + 1024] if self.max_len else text

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
