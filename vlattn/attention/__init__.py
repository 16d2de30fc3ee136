"""Attention mechanisms shared by every plugin, built by name from the registry.

>>> attn = build_attention("additive", query_dim=100, key_dim=100)   # doctest: +SKIP
>>> context, weights = attn(query, keys, mask=mask)                   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from vlattn.attention.base import Attention, lengths_to_mask, masked_softmax


def build_attention(name: str, query_dim: int, key_dim: int, **options: Any) -> Attention:
    """Instantiate the mechanism registered as ``name`` (by any plugin).

    Raises :class:`vlattn.errors.UnknownNameError` naming close matches for an unknown name.
    """
    from vlattn.plugins import attention_registry

    factory = attention_registry().get(name).load()
    return factory(query_dim, key_dim, **options)


__all__ = ["Attention", "build_attention", "lengths_to_mask", "masked_softmax"]
