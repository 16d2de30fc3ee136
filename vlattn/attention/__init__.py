"""Attention mechanisms shared by every plugin, built by name from the registry.

>>> attn = build_attention("additive", query_dim=100, key_dim=100)   # doctest: +SKIP
>>> context, weights = attn(query, keys, mask=mask)                   # doctest: +SKIP

The package imports torch only when one of its torch-based names is first used, so the
registration module :mod:`vlattn.attention.plugin` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlattn.attention.base import Attention, lengths_to_mask, masked_softmax
    from vlattn.attention.multihead import MultiHeadAttention
    from vlattn.attention.reinforce import ReinforceLoss
    from vlattn.attention.spatial import HardAttentionSample
    from vlattn.attention.transformer import (
        SinusoidalPositionalEncoding,
        TransformerEncoder,
        TransformerEncoderLayer,
    )

_LAZY = {
    "Attention": "base",
    "lengths_to_mask": "base",
    "masked_softmax": "base",
    "MultiHeadAttention": "multihead",
    "ReinforceLoss": "reinforce",
    "HardAttentionSample": "spatial",
    "SinusoidalPositionalEncoding": "transformer",
    "TransformerEncoder": "transformer",
    "TransformerEncoderLayer": "transformer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"vlattn.attention.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vlattn.attention' has no attribute {name!r}")


def build_attention(name: str, query_dim: int, key_dim: int, **options: Any) -> Attention:
    """Instantiate the mechanism registered as ``name`` (by any plugin).

    Raises :class:`vlattn.errors.UnknownNameError` naming close matches for an unknown name,
    :class:`vlattn.attention.errors.AttentionConfigError` (a ``VlattnError``) naming the
    accepted options when an option name is unknown, and :class:`vlattn.errors.PluginContractError`
    naming the mechanism and its plugin when the factory does not return a module or, at the
    module's first calls, when ``forward`` returns something other than ``(context [B, (Tq,) Dc],
    weights [B, (Tq,) S] | None)``.
    """
    import inspect

    from vlattn.attention.boundary import watch_outputs
    from vlattn.attention.errors import AttentionConfigError
    from vlattn.plugins import attention_registry

    spec = attention_registry().get(name)
    factory = spec.load()
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some callables have no inspectable signature
        signature = None
    if signature is not None:
        try:
            signature.bind(query_dim, key_dim, **options)
        except TypeError:
            accepted = [
                p.name
                for p in list(signature.parameters.values())[2:]
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            unknown = sorted(set(options) - set(accepted))
            raise AttentionConfigError(
                f"attention mechanism {name!r} has no option {', '.join(map(repr, unknown))}"
                f" (options: {', '.join(accepted) or 'none'})"
            ) from None
    module = factory(query_dim, key_dim, **options)
    if not isinstance(module, torch_module()):
        from vlattn.errors import PluginContractError

        raise PluginContractError(
            f"attention mechanism {name!r} of plugin {spec.plugin!r}: its factory returned "
            f"{type(module).__name__}, expected a torch.nn.Module (subclass vlattn.attention.Attention)"
        )
    return watch_outputs(module, name, spec.plugin)


def torch_module() -> type:
    """``torch.nn.Module``, imported when first needed."""
    from torch import nn

    return nn.Module


__all__ = [
    "Attention",
    "HardAttentionSample",
    "MultiHeadAttention",
    "ReinforceLoss",
    "SinusoidalPositionalEncoding",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "build_attention",
    "lengths_to_mask",
    "masked_softmax",
]
