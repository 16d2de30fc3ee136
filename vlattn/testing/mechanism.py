"""The contract every attention mechanism keeps, as checks a plugin author can run.

>>> from vlattn.testing import check_mechanism
>>> check_mechanism("additive")                          # doctest: +SKIP
>>> check_mechanism(MyAttention, query_dim=6, key_dim=4)  # doctest: +SKIP

Each check builds the mechanism afresh (seeded, eval mode, float32 or float64) and raises
:class:`ContractViolation` with one line saying which promise broke and how. The promises are the
README's: shapes for ``[B, Dq]`` and ``[B, Tq, Dq]`` queries, weights that are non-negative, sum
to 1 over kept positions and are 0 on padding, padding content that cannot change the result,
an all-padding row giving zeros (and finite gradients), float64 gradients that match finite
differences, and a state that survives a safetensors round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from vlattn.attention.boundary import context_size
from vlattn.errors import VlattnError


class ContractViolation(VlattnError, AssertionError):
    """A mechanism or task breaks a promise of the interface vlattn documents for it."""


@dataclass
class MechanismCase:
    """How to build and call one mechanism for the checks.

    Attributes:
        factory: called as ``factory(query_dim, key_dim, **options)``.
        name: used in messages.
        query_dim, key_dim: ``Dq`` and ``Dk``; small, so float64 gradcheck is quick.
        options: keyword options of the factory.
        batch, source, steps: ``B``, ``S`` and ``Tq`` of the inputs.
        partial_weights: the weights may sum to less than 1 (``local-p``'s Gaussian factor).
        per_step_query: a ``[B, Tq, Dq]`` query must equal ``Tq`` calls with ``[B, Dq]``; turn off
            for mechanisms whose single-query call needs extra inputs (``local-m``'s positions).
        call_options: extra keyword arguments of ``forward`` (besides query, keys, values, mask).
        other_value_size: check ``values`` whose size differs from the keys'; turn off for
            mechanisms built for one value size (``multihead``'s ``value_dim``).
        plugin: the plugin that registered the mechanism, for messages.
    """

    factory: Callable[..., nn.Module]
    name: str
    query_dim: int = 5
    key_dim: int = 4
    options: Mapping[str, Any] = field(default_factory=dict)
    batch: int = 3
    source: int = 6
    steps: int = 4
    partial_weights: bool = False
    per_step_query: bool = True
    call_options: Mapping[str, Any] = field(default_factory=dict)
    other_value_size: bool = True
    plugin: str = ""

    def build(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        """A fresh module (seed 0, eval mode, ``dtype``)."""
        torch.manual_seed(0)
        module = self.factory(self.query_dim, self.key_dim, **dict(self.options))
        if not isinstance(module, nn.Module):
            raise self.fail(f"the factory returned {type(module).__name__}, not a torch.nn.Module")
        return module.to(dtype).eval()

    def inputs(self, *, steps: int | None = None, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
        """``query [B, Dq]`` (or ``[B, Tq, Dq]``), ``keys [B, S, Dk]`` and a ragged ``mask [B, S]``
        whose rows keep ``S, S - 2, ...`` positions (at least one)."""
        gen = torch.Generator().manual_seed(1)
        shape = (self.batch, self.query_dim) if steps is None else (self.batch, steps, self.query_dim)
        query = torch.randn(shape, generator=gen, dtype=dtype)
        keys = torch.randn(self.batch, self.source, self.key_dim, generator=gen, dtype=dtype)
        lengths = torch.tensor([max(1, self.source - 2 * i) for i in range(self.batch)])
        mask = torch.arange(self.source)[None, :] < lengths[:, None]
        return query, keys, mask

    def call(
        self, module: nn.Module, query: Tensor, keys: Tensor, values: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """``module(query, keys, values, mask=mask)``, checked to be a ``(context, weights)`` pair."""
        output = module(query, keys, values, mask=mask, **dict(self.call_options))
        if not isinstance(output, tuple) or len(output) != 2:
            raise self.fail(f"forward must return (context, weights), got {type(output).__name__}")
        return output  # type: ignore[return-value]

    def fail(self, message: str) -> ContractViolation:
        """The :class:`ContractViolation` to raise: ``attention mechanism 'x' of plugin 'p': message``."""
        by = f" of plugin {self.plugin!r}" if self.plugin else ""
        return ContractViolation(f"attention mechanism {self.name!r}{by}: {message}")


def _close(a: Tensor, b: Tensor, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=tol, rtol=tol))


def check_single_query(case: MechanismCase) -> None:
    """``query [B, Dq]`` -> ``context [B, Dc]``, ``weights [B, S]`` with the weights' promises."""
    module = case.build()
    query, keys, mask = case.inputs()
    context, weights = case.call(module, query, keys, mask=mask)
    want = (case.batch, context_size(module, case.key_dim))
    if tuple(context.shape) != want:
        raise case.fail(f"context for a [B, Dq] query has shape {tuple(context.shape)}, expected {want}")
    if weights is None:
        return
    if tuple(weights.shape) != (case.batch, case.source):
        raise case.fail(
            f"weights for a [B, Dq] query have shape {tuple(weights.shape)}, expected {(case.batch, case.source)}"
        )
    _check_weights(case, weights, mask)


def _check_weights(case: MechanismCase, weights: Tensor, mask: Tensor) -> None:
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise case.fail("weights must be finite and non-negative")
    if (weights[~mask] != 0).any():
        raise case.fail("padding positions (mask False) must get weight exactly 0")
    sums = weights.sum(-1)
    if case.partial_weights:
        if (sums > 1 + 1e-5).any():
            raise case.fail(f"weights sum to more than 1 ({float(sums.max()):.6f})")
    elif not _close(sums, torch.ones_like(sums), 1e-5):
        raise case.fail(f"weights must sum to 1 over the kept positions (sums {sums.tolist()})")


def check_query_sequence(case: MechanismCase) -> None:
    """``query [B, Tq, Dq]`` -> ``[B, Tq, Dc]`` and ``[B, Tq, S]``, equal to ``Tq`` single-query calls."""
    module = case.build()
    query, keys, mask = case.inputs(steps=case.steps)
    context, weights = case.call(module, query, keys, mask=mask)
    want = (case.batch, case.steps, context_size(module, case.key_dim))
    if tuple(context.shape) != want:
        raise case.fail(f"context for a [B, Tq, Dq] query has shape {tuple(context.shape)}, expected {want}")
    if weights is not None and tuple(weights.shape) != (case.batch, case.steps, case.source):
        raise case.fail(
            f"weights for a [B, Tq, Dq] query have shape {tuple(weights.shape)}, "
            f"expected {(case.batch, case.steps, case.source)}"
        )
    if not case.per_step_query:
        return
    for t in range(case.steps):
        c_t, w_t = case.call(module, query[:, t], keys, mask=mask)
        if not _close(c_t, context[:, t], 1e-4) or (weights is not None and not _close(w_t, weights[:, t], 1e-4)):
            raise case.fail(f"query step {t} of a [B, Tq, Dq] query differs from the same query given as [B, Dq]")


def check_values(case: MechanismCase) -> None:
    """``values [B, S, Dv]`` may differ from the keys in size; without a projection of the output,
    ``context = sum_s weights[s] * values[s]``."""
    if not case.other_value_size:
        return
    module = case.build()
    query, keys, mask = case.inputs()
    values = torch.randn(case.batch, case.source, case.key_dim + 3, generator=torch.Generator().manual_seed(2))
    context, weights = case.call(module, query, keys, values, mask=mask)
    size = context_size(module, values.shape[-1])
    if tuple(context.shape) != (case.batch, size):
        raise case.fail(f"with values [B, S, {values.shape[-1]}] the context has shape {tuple(context.shape)}")
    summed = None if weights is None or size != values.shape[-1] else torch.einsum("bs,bsd->bd", weights, values)
    if summed is not None and not _close(context, summed, 1e-4):
        raise case.fail("the context is not the weights' sum of the values")


def check_mask(case: MechanismCase) -> None:
    """Padding content cannot change the result; an all-padding row gives zeros, never NaN."""
    module = case.build()
    query, keys, mask = case.inputs()
    context, weights = case.call(module, query, keys, mask=mask)
    noisy = keys.clone()
    noisy[~mask] = 1e3 * torch.randn(int((~mask).sum()), case.key_dim, generator=torch.Generator().manual_seed(3))
    context2, weights2 = case.call(module, query, noisy, mask=mask)
    if not _close(context2, context, 1e-4) or (weights is not None and not _close(weights2, weights, 1e-4)):
        raise case.fail("changing the keys at padding positions (mask False) changed the result")
    mask = mask.clone()
    mask[-1] = False
    query = query.clone().requires_grad_(True)
    keys = keys.clone().requires_grad_(True)
    context, weights = case.call(module, query, keys, mask=mask)
    if not torch.isfinite(context).all() or (context[-1] != 0).any():
        raise case.fail("a row whose positions are all padding must give a context of zeros (no NaN)")
    if weights is not None and (not torch.isfinite(weights).all() or (weights[-1] != 0).any()):
        raise case.fail("a row whose positions are all padding must give weights of zeros (no NaN)")
    context.sum().backward()
    grads = [g for g in (query.grad, keys.grad) if g is not None]
    if any(not torch.isfinite(g).all() for g in grads):
        raise case.fail("an all-padding row gives non-finite gradients")


def check_gradients(case: MechanismCase) -> None:
    """float64 gradients with respect to inputs and parameters match finite differences."""
    module = case.build(torch.float64)
    query, keys, mask = case.inputs(dtype=torch.float64)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    query.requires_grad_(True)
    keys.requires_grad_(True)

    def run(q: Tensor, k: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
        state = dict(zip(names, flat, strict=True))
        out = torch.func.functional_call(module, state, (q, k), {"mask": mask, **dict(case.call_options)})
        return tuple(t for t in out if t is not None)

    try:
        ok = torch.autograd.gradcheck(run, (query, keys, *params), fast_mode=True, raise_exception=False)
    except RuntimeError as exc:
        raise case.fail(f"gradcheck could not run: {str(exc).splitlines()[0]}") from None
    if not ok:
        raise case.fail("float64 gradients do not match finite differences (torch.autograd.gradcheck)")


def check_safetensors_round_trip(case: MechanismCase) -> None:
    """The state dict saves to safetensors and a fresh module loaded from it gives the same outputs."""
    import tempfile
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    module = case.build()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(4)))
    query, keys, mask = case.inputs()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mechanism.safetensors"
        try:
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
        except Exception as exc:  # shared tensors, non-tensor state ...
            raise case.fail(f"its state dict cannot be saved with safetensors ({exc})") from None
        fresh = case.build()
        fresh.load_state_dict(load_file(str(path)))
    for out, ref in zip(
        case.call(fresh, query, keys, mask=mask), case.call(module, query, keys, mask=mask), strict=True
    ):
        if (out is None) != (ref is None) or (out is not None and not _close(out, ref)):
            raise case.fail("a module loaded from its saved state gives different outputs")


CHEAP_CHECKS: tuple[Callable[[MechanismCase], None], ...] = (
    check_single_query,
    check_query_sequence,
    check_values,
    check_mask,
)
ALL_CHECKS: tuple[Callable[[MechanismCase], None], ...] = (
    *CHEAP_CHECKS,
    check_gradients,
    check_safetensors_round_trip,
)


def mechanism_case(mechanism: str | Callable[..., nn.Module], **settings: Any) -> MechanismCase:
    """A :class:`MechanismCase` for a registered name or a factory (class or callable).

    For a registered name, the spec's ``contract`` settings apply first; ``settings`` win (their
    ``options`` are merged into the spec's).
    """
    if isinstance(mechanism, str):
        from vlattn.plugins import attention_registry

        spec = attention_registry().get(mechanism)
        merged = {**dict(spec.contract), **settings}
        merged["options"] = {**dict(spec.contract.get("options", {})), **dict(settings.get("options", {}))}
        return MechanismCase(spec.load(), mechanism, plugin=spec.plugin, **merged)
    return MechanismCase(mechanism, getattr(mechanism, "__name__", repr(mechanism)), **settings)


def check_mechanism(
    mechanism: str | Callable[..., nn.Module],
    *,
    cheap: bool = False,
    checks: tuple[Callable[[MechanismCase], None], ...] | None = None,
    **settings: Any,
) -> list[str]:
    """Run the mechanism contract on ``mechanism`` (a registered name, or a class / factory).

    Args:
        mechanism: ``"additive"`` or a class called as ``Class(query_dim, key_dim, **options)``.
        cheap: only the shape, weight, values and mask checks (no gradcheck, no file round trip).
        checks: run exactly these checks instead (any of :data:`ALL_CHECKS`).
        settings: fields of :class:`MechanismCase` (``query_dim``, ``key_dim``, ``options``,
            ``partial_weights``, ``per_step_query``, ...).

    Returns the names of the checks that passed; raises :class:`ContractViolation` at the first one
    that fails.
    """
    case = mechanism_case(mechanism, **settings)
    passed = []
    for check in checks or (CHEAP_CHECKS if cheap else ALL_CHECKS):
        try:
            check(case)
        except ContractViolation:
            raise
        except Exception as exc:
            raise case.fail(
                f"{check.__name__} raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
        passed.append(check.__name__)
    return passed
