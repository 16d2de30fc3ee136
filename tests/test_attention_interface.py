"""The contract every built-in mechanism keeps: shapes, masking, gradients, save/load."""

from __future__ import annotations

import pytest
import torch
from attention_cases import (
    CASES,
    build,
    builtin_only,
    inputs,
)

from vlattn.attention import build_attention
from vlattn.attention.plugin import BUILTIN
from vlattn.testing import ALL_CHECKS, check_mechanism

NAMES = sorted(CASES)


def test_every_registered_name_is_covered_and_builds_with_defaults() -> None:
    assert {spec.name for spec in BUILTIN} == set(CASES)
    with builtin_only():
        for spec in BUILTIN:
            module = build_attention(spec.name, 16, 16)
            assert isinstance(module, torch.nn.Module)
            assert spec.formula and spec.paper and spec.summary


@pytest.mark.parametrize("name", NAMES)
def test_builtin_mechanisms_keep_the_contract(name: str) -> None:
    """The plugin authors' contract kit, run on every built-in mechanism."""
    with builtin_only():
        query_dim, key_dim, options = CASES[name]  # the spec's own ``contract`` settings apply too
        passed = check_mechanism(name, query_dim=query_dim, key_dim=key_dim, options=options)
    assert passed == [check.__name__ for check in ALL_CHECKS]


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


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64_whole_jacobians(name: str) -> None:
    """Gradients with respect to the inputs and every parameter match finite differences, whole
    Jacobians (the contract kit compares random projections of them)."""
    module = build(name, dtype=torch.float64)
    query, keys, mask = inputs(name, batch=2, source=4, dtype=torch.float64)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    query.requires_grad_(True)
    keys.requires_grad_(True)

    def run(q: torch.Tensor, k: torch.Tensor, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = dict(zip(names, flat, strict=True))
        return torch.func.functional_call(module, state, (q, k), {"mask": mask})

    assert torch.autograd.gradcheck(run, (query, keys, *params), fast_mode=False)


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
