"""Shared helpers for the attention tests: building mechanisms by name in an isolated registry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

import vlattn.attention.plugin as builtin_plugin
from vlattn.attention import build_attention
from vlattn.attention.base import Attention
from vlattn.plugins import PluginHost, set_host

# name -> (query_dim, key_dim, options) small enough for float64 gradcheck
CASES: dict[str, tuple[int, int, dict[str, Any]]] = {
    "additive": (5, 4, {"hidden_dim": 3}),
    "dot": (4, 4, {}),
    "general": (5, 4, {}),
    "concat": (5, 4, {"hidden_dim": 3}),
    "location": (5, 4, {"max_len": 8}),
    "soft-spatial": (5, 4, {"hidden_dim": 3}),
    "hard-spatial": (5, 4, {"hidden_dim": 3, "eval_mode": "expectation"}),
    "local-m": (5, 4, {"window": 1}),
    "local-p": (5, 4, {"window": 2, "score": "concat"}),
    "scaled-dot": (4, 4, {}),
    "multihead": (6, 4, {"num_heads": 2}),
    "tutorial": (5, 4, {"steps": 8, "mask_padding": True}),
    "tutorial-corrected": (5, 4, {"hidden_dim": 3}),
}

# local-p multiplies the window softmax by a Gaussian and (as in the paper) does not renormalise
PARTIAL_WEIGHTS = {"local-p"}
# multihead's context is projected (out_proj), so it is not weights @ values
PROJECTED_CONTEXT = {"multihead"}


@contextmanager
def builtin_only() -> Iterator[None]:
    """Make the process registry hold only the built-in mechanisms (no installed plugins)."""
    host = PluginHost()
    host.add_plugin(builtin_plugin, "attention")
    set_host(host)
    try:
        yield
    finally:
        set_host(None)


def build(name: str, dtype: torch.dtype = torch.float32, **extra: Any) -> Attention:
    """Build the mechanism ``name`` with its test dimensions (seeded, eval mode)."""
    query_dim, key_dim, options = CASES[name]
    torch.manual_seed(0)
    with builtin_only():
        module = build_attention(name, query_dim, key_dim, **{**options, **extra})
    return module.to(dtype).eval()


def inputs(
    name: str,
    batch: int = 3,
    source: int = 6,
    steps: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random query, keys and a ragged mask (lengths source, source - 2, ...) for ``name``."""
    query_dim, key_dim, _ = CASES[name]
    gen = torch.Generator().manual_seed(1)
    shape = (batch, query_dim) if steps is None else (batch, steps, query_dim)
    query = torch.randn(shape, generator=gen, dtype=dtype)
    keys = torch.randn(batch, source, key_dim, generator=gen, dtype=dtype)
    lengths = torch.tensor([max(1, source - 2 * i) for i in range(batch)])
    mask = torch.arange(source)[None, :] < lengths[:, None]
    return query, keys, mask
