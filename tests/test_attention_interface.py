"""The contract every built-in mechanism keeps: shapes, masking, gradients, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from attention_cases import (
    CASES,
    PARTIAL_WEIGHTS,
    PROJECTED_CONTEXT,
    build,
    builtin_only,
    inputs,
)
from safetensors.torch import load_file, save_file

from vlattn.attention import build_attention
from vlattn.attention.plugin import BUILTIN

NAMES = sorted(CASES)


def test_every_registered_name_is_covered_and_builds_with_defaults() -> None:
    assert {spec.name for spec in BUILTIN} == set(CASES)
    with builtin_only():
        for spec in BUILTIN:
            module = build_attention(spec.name, 16, 16)
            assert isinstance(module, torch.nn.Module)
            assert spec.formula and spec.paper and spec.summary


@pytest.mark.parametrize("name", NAMES)
def test_single_query_shapes_and_weights_sum_to_one(name: str) -> None:
    module = build(name)
    query, keys, mask = inputs(name)
    context, weights = module(query, keys, mask=mask)
    out_dim = CASES[name][0] if name in PROJECTED_CONTEXT else keys.shape[-1]
    assert context.shape == (3, out_dim)
    assert weights.shape == (3, 6)
    assert torch.all(weights >= 0)
    if name in PARTIAL_WEIGHTS:
        assert torch.all(weights.sum(-1) > 0) and torch.all(weights.sum(-1) <= 1 + 1e-6)
    else:
        torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    assert torch.all(weights[~mask] == 0)


@pytest.mark.parametrize("name", NAMES)
def test_query_sequence_matches_single_queries(name: str) -> None:
    module = build(name)
    query, keys, mask = inputs(name, steps=4)
    context, weights = module(query, keys, mask=mask)
    assert context.shape[:2] == (3, 4) and weights.shape == (3, 4, 6)
    for t in range(4):
        # local-m aligns step t with source position t; a single query must be told its step
        step = {"positions": torch.full((3,), t)} if name == "local-m" else {}
        c_t, w_t = module(query[:, t], keys, mask=mask, **step)
        torch.testing.assert_close(c_t, context[:, t])
        torch.testing.assert_close(w_t, weights[:, t])


@pytest.mark.parametrize("name", sorted(set(NAMES) - PROJECTED_CONTEXT))
def test_values_default_to_keys_and_can_differ(name: str) -> None:
    module = build(name)
    query, keys, mask = inputs(name)
    values = torch.randn(3, 6, 7)
    context, weights = module(query, keys, values, mask=mask)
    assert context.shape == (3, 7)
    torch.testing.assert_close(context, torch.einsum("bs,bsd->bd", weights, values))


@pytest.mark.parametrize("name", NAMES)
def test_fully_masked_row_gives_zeros_not_nan(name: str) -> None:
    module = build(name)
    query, keys, mask = inputs(name)
    mask[1] = False
    query.requires_grad_(True)
    keys.requires_grad_(True)
    context, weights = module(query, keys, mask=mask)
    assert torch.isfinite(context).all() and torch.isfinite(weights).all()
    assert torch.all(weights[1] == 0)
    assert torch.all(context[1] == 0)
    context.sum().backward()
    assert keys.grad is not None and torch.isfinite(keys.grad).all()
    assert query.grad is None or torch.isfinite(query.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_padding_content_does_not_change_the_result(name: str) -> None:
    module = build(name)
    query, keys, mask = inputs(name)
    context, weights = module(query, keys, mask=mask)
    noisy = keys.clone()
    noisy[~mask] = 1e3 * torch.randn(int((~mask).sum()), keys.shape[-1])
    context2, weights2 = module(query, noisy, mask=mask)
    torch.testing.assert_close(context2, context)
    torch.testing.assert_close(weights2, weights)


@pytest.mark.parametrize("fast", [True, pytest.param(False, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name: str, fast: bool) -> None:
    """Gradients with respect to the inputs and every parameter match finite differences.

    The fast mode compares random projections of the Jacobians; ``-m slow`` checks them whole.
    """
    module = build(name, dtype=torch.float64)
    query, keys, mask = inputs(name, batch=2, source=4, dtype=torch.float64)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    query.requires_grad_(True)
    keys.requires_grad_(True)

    def run(q: torch.Tensor, k: torch.Tensor, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = dict(zip(names, flat, strict=True))
        return torch.func.functional_call(module, state, (q, k), {"mask": mask})

    assert torch.autograd.gradcheck(run, (query, keys, *params), fast_mode=fast)


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trips_through_safetensors(name: str, tmp_path: Path) -> None:
    module = build(name)
    query, keys, mask = inputs(name)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "attn.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    fresh = build(name)
    fresh.load_state_dict(load_file(str(path)))
    for out, ref in zip(fresh(query, keys, mask=mask), module(query, keys, mask=mask), strict=True):
        torch.testing.assert_close(out, ref)


def test_registering_the_mechanisms_imports_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, vlattn.attention.plugin as p; "
        "specs = []; p.register_attention(specs.append); "
        "assert len(specs) == 13 and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_options_are_one_line_user_errors() -> None:
    from vlattn.attention.errors import AttentionConfigError
    from vlattn.errors import VlattnError

    with builtin_only():
        with pytest.raises(AttentionConfigError, match=r"no option 'hiden_dim' \(options: "):
            build_attention("additive", 4, 4, hiden_dim=3)
        with pytest.raises(VlattnError, match="query_dim == key_dim"):
            build_attention("dot", 4, 5)
        with pytest.raises(VlattnError, match="divisible"):
            build_attention("multihead", 10, 10, num_heads=3)
        with pytest.raises(VlattnError, match="max_len=9"):
            build_attention("location", 4, 4, max_len=8)(torch.randn(1, 4), torch.randn(1, 9, 4))
