"""Checking what a registered mechanism returns, where a model first calls it.

A third-party mechanism that returns ``[B, 1, Dv]`` instead of ``[B, Dv]``, a bare tensor instead
of ``(context, weights)``, or a context of the wrong size would otherwise fail far away, inside the
model that called it. :func:`watch_outputs` checks the first calls of each query rank and then
removes itself, so a model pays nothing once both ranks were seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from vlattn.errors import PluginContractError

CHECKED_CALLS = 4  # calls checked per module (at most) before the hook removes itself


def context_size(module: nn.Module, value_dim: int) -> int:
    """The size ``Dc`` of the context ``module`` returns for values of size ``value_dim``.

    ``Dv`` unless the mechanism says otherwise with a ``context_size(value_dim)`` method (as
    multi-head attention does: its output projection gives ``embed_dim``).
    """
    method = getattr(module, "context_size", None)
    return int(method(value_dim)) if callable(method) else value_dim


def _argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def expected_shapes(
    module: nn.Module, query: Tensor | None, keys: Tensor, values: Tensor | None
) -> tuple[tuple[int, ...], int]:
    """``(context shape, S)`` that the interface promises for these inputs."""
    batch, source = keys.shape[0], keys.shape[1]
    value_dim = (values if values is not None else keys).shape[-1]
    steps = () if query is None or query.dim() == 2 else (query.shape[1],)
    return (batch, *steps, context_size(module, value_dim)), source


def problem_with(module: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any], output: Any) -> str | None:
    """What is wrong with ``output`` for a call with ``args`` / ``kwargs``, or ``None``."""
    query, keys = _argument(args, kwargs, 0, "query"), _argument(args, kwargs, 1, "keys")
    values = _argument(args, kwargs, 2, "values")
    if not isinstance(keys, Tensor) or keys.dim() != 3:
        return None  # not the documented call: nothing to compare with
    if not isinstance(output, tuple) or len(output) != 2:
        got = type(output).__name__ if not isinstance(output, tuple) else f"a tuple of {len(output)}"
        return f"forward must return (context, weights), got {got}"
    context, weights = output
    want, source = expected_shapes(module, query, keys, values if isinstance(values, Tensor) else None)
    if not isinstance(context, Tensor) or tuple(context.shape) != want:
        got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
        shown = "None" if query is None else list(query.shape)
        return (
            f"context has shape {got}, expected {want} for query {shown} and keys {list(keys.shape)} "
            "(context [B, Dv] for a query [B, Dq], [B, Tq, Dv] for [B, Tq, Dq])"
        )
    if weights is not None:
        if not isinstance(weights, Tensor):
            return f"weights must be a tensor or None, got {type(weights).__name__}"
        if weights.dim() < 2 or weights.shape[0] != want[0] or weights.shape[-1] != source:
            return f"weights have shape {tuple(weights.shape)}, expected {(*want[:-1], source)}"
    return None


def watch_outputs(module: nn.Module, name: str, plugin: str) -> nn.Module:
    """Make ``module``'s first calls raise :class:`PluginContractError` (one line naming the
    mechanism, its plugin and what was expected) when their outputs break the interface."""
    seen: set[int] = set()
    calls = [0]

    def check(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        calls[0] += 1
        problem = problem_with(mod, args, kwargs, output)
        if problem is not None:
            handle.remove()
            raise PluginContractError(f"attention mechanism {name!r} of plugin {plugin!r}: {problem}")
        query = _argument(args, kwargs, 0, "query")
        seen.add(query.dim() if isinstance(query, Tensor) else 0)
        if {2, 3} <= seen or 0 in seen or calls[0] >= CHECKED_CALLS:
            handle.remove()

    handle = module.register_forward_hook(check, with_kwargs=True)
    return module


__all__ = ["context_size", "expected_shapes", "problem_with", "watch_outputs"]
