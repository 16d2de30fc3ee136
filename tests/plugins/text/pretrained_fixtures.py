"""A tiny randomly initialised BERT checkpoint in the Hugging Face layout, for offline tests:
``config.json``, ``model.safetensors`` (``BertModel`` names) and a WordPiece ``tokenizer.json``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = [
    "the",
    "food",
    "was",
    "not",
    "good",
    "at",
    "all",
    "great",
    "phone",
    "bad",
    "service",
    "love",
    "it",
    "terrible",
    "battery",
    "works",
    "##s",
    "##ing",
    "##ly",
    ".",
    ",",
    "!",
    "a",
    "i",
    "very",
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "hidden_act": "gelu",
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "pad_token_id": 0,
    "vocab_size": len(SPECIAL) + len(WORDS),
}


def hf_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under ``BertModel``'s names (with a pooler, which the encoder drops)."""
    g = torch.Generator().manual_seed(seed)
    h, ff, vocab = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]

    def rand(*shape: int) -> torch.Tensor:
        return 0.2 * torch.randn(*shape, generator=g)

    state = {
        "embeddings.word_embeddings.weight": rand(vocab, h),
        "embeddings.position_embeddings.weight": rand(CONFIG["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": rand(2, h),
        "embeddings.LayerNorm.weight": 1 + rand(h),
        "embeddings.LayerNorm.bias": rand(h),
        "embeddings.position_ids": torch.arange(CONFIG["max_position_embeddings"])[None],
        "pooler.dense.weight": rand(h, h),
        "pooler.dense.bias": rand(h),
    }
    for i in range(CONFIG["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            state[f"{p}attention.self.{name}.weight"] = rand(h, h)
            state[f"{p}attention.self.{name}.bias"] = rand(h)
        state[f"{p}attention.output.dense.weight"], state[f"{p}attention.output.dense.bias"] = rand(h, h), rand(h)
        state[f"{p}attention.output.LayerNorm.weight"], state[f"{p}attention.output.LayerNorm.bias"] = (
            1 + rand(h),
            rand(h),
        )
        state[f"{p}intermediate.dense.weight"], state[f"{p}intermediate.dense.bias"] = rand(ff, h), rand(ff)
        state[f"{p}output.dense.weight"], state[f"{p}output.dense.bias"] = rand(h, ff), rand(h)
        state[f"{p}output.LayerNorm.weight"], state[f"{p}output.LayerNorm.bias"] = 1 + rand(h), rand(h)
    return state


def write_tokenizer(path: Path) -> None:
    """A BERT-style WordPiece ``tokenizer.json`` over :data:`WORDS` (lower-cased, [CLS] ... [SEP])."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.save(str(path))


def write_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """Write the tiny checkpoint into ``folder`` and return it."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    save_file({k: v.contiguous() for k, v in hf_state_dict(seed).items()}, str(folder / "model.safetensors"))
    write_tokenizer(folder / "tokenizer.json")
    return folder


def reference_bert(state: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BERT written out from the paper's formulas, independently of vlattn: ``[B, T, H]``."""
    import math

    import torch.nn.functional as F

    h, heads, eps = CONFIG["hidden_size"], CONFIG["num_attention_heads"], CONFIG["layer_norm_eps"]

    def norm(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(x, (h,), state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps)

    def linear(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return x @ state[f"{prefix}.weight"].T + state[f"{prefix}.bias"]

    steps = ids.shape[1]
    x = (
        state["embeddings.word_embeddings.weight"][ids]
        + state["embeddings.position_embeddings.weight"][:steps]
        + state["embeddings.token_type_embeddings.weight"][0]
    )
    x = norm(x, "embeddings.LayerNorm")
    bias = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(~mask, float("-inf"))[:, None, None, :]
    for i in range(CONFIG["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(t.shape[0], steps, heads, h // heads).transpose(1, 2)

        q, k, v = (split(linear(x, f"{p}attention.self.{n}")) for n in ("query", "key", "value"))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(h // heads) + bias, dim=-1)
        context = (probs @ v).transpose(1, 2).reshape(x.shape)
        x = norm(x + linear(context, f"{p}attention.output.dense"), f"{p}attention.output.LayerNorm")
        inner = F.gelu(linear(x, f"{p}intermediate.dense"))
        x = norm(x + linear(inner, f"{p}output.dense"), f"{p}output.LayerNorm")
    return x
