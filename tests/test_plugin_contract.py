"""The contract kit for plugin authors (``vlattn.testing``), validation where a model calls a
registered mechanism, and ``vlattn plugins --check``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

import vlattn.attention.plugin as builtin_attention
from tests.conftest import BUILTIN_PLUGINS, subprocess_env, write_distribution
from vlattn.attention import build_attention
from vlattn.attention.base import Attention, masked_softmax
from vlattn.errors import PluginContractError, PluginFactoryError
from vlattn.plugins import PluginHost, set_host
from vlattn.registry import AttentionSpec
from vlattn.testing import ContractViolation, check_mechanism

MISTAKES = """
import torch
from vlattn.attention.base import Attention, masked_softmax

class Base(Attention):
    def scores(self, query, keys, mask):
        weights = masked_softmax(torch.einsum("bd,bsd->bs", query[..., : keys.shape[-1]], keys), mask)
        return weights, torch.einsum("bs,bsd->bd", weights, keys)

class ExtraDim(Base):          # [B, 1, Dv] instead of [B, Dv]
    def forward(self, query, keys, values=None, mask=None):
        weights, context = self.scores(query, keys, mask)
        return context[:, None], weights

class BareTensor(Base):        # no weights
    def forward(self, query, keys, values=None, mask=None):
        return self.scores(query, keys, mask)[1]

class WrongSize(Base):         # context of the query's size
    def forward(self, query, keys, values=None, mask=None):
        weights, context = self.scores(query, keys, mask)
        return torch.cat([context, context], -1), weights

class IgnoresMask(Base):
    def forward(self, query, keys, values=None, mask=None):
        weights, context = self.scores(query, keys, None)
        return context, weights
"""


@pytest.fixture
def mistakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginHost]:
    """A host with the built-in mechanisms and a plugin ``sloppy`` registering faulty ones."""
    import types

    (tmp_path / "sloppy_mechanisms.py").write_text(MISTAKES)
    monkeypatch.syspath_prepend(str(tmp_path))
    from vlattn import hookimpl

    plugin = types.ModuleType("sloppy_plugin")

    @hookimpl
    def register_attention(register):  # type: ignore[no-untyped-def]
        for name in ("ExtraDim", "BareTensor", "WrongSize", "IgnoresMask"):
            register(AttentionSpec(name.lower(), f"sloppy_mechanisms:{name}"))
        register(AttentionSpec("typo", "sloppy_mechanisms.attentoin:Cosine"))

    plugin.register_attention = register_attention  # type: ignore[attr-defined]
    host = PluginHost()
    host.add_plugin(builtin_attention, "attention")
    host.add_plugin(plugin, "sloppy")
    set_host(host)
    yield host
    set_host(None)
    sys.modules.pop("sloppy_mechanisms", None)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("extradim", r"context has shape \(2, 1, 4\), expected \(2, 4\) for query \[2, 4\] and keys \[2, 5, 4\]"),
        ("baretensor", "forward must return \\(context, weights\\), got Tensor"),
        ("wrongsize", r"context has shape \(2, 8\), expected \(2, 4\)"),
    ],
)
def test_a_wrong_output_is_one_line_naming_mechanism_and_plugin(mistakes: PluginHost, name: str, message: str) -> None:
    module = build_attention(name, 4, 4)
    with pytest.raises(PluginContractError, match=f"attention mechanism '{name}' of plugin 'sloppy': {message}"):
        module(torch.randn(2, 4), torch.randn(2, 5, 4))


def test_a_wrong_output_surfaces_at_the_mechanism_inside_a_builtin_model(mistakes: PluginHost) -> None:
    from vlattn_text.models import RecurrentClassifier

    model = RecurrentClassifier(vocab_size=10, num_classes=2, embed_dim=4, hidden_size=4, attention="extradim")
    with pytest.raises(PluginContractError, match="attention mechanism 'extradim' of plugin 'sloppy'"):
        model(torch.randint(1, 10, (2, 5)), torch.tensor([5, 3]))


def test_the_check_stops_once_outputs_were_seen_to_be_right(mistakes: PluginHost) -> None:
    module = build_attention("additive", 4, 4)
    assert len(module._forward_hooks) == 1
    module(torch.randn(2, 4), torch.randn(2, 5, 4))
    module(torch.randn(2, 3, 4), torch.randn(2, 5, 4))
    assert len(module._forward_hooks) == 0  # both query ranks checked: no cost from now on


def test_a_factory_typo_names_the_mechanism_and_plugin(mistakes: PluginHost) -> None:
    with pytest.raises(PluginFactoryError) as info:
        build_attention("typo", 4, 4)
    assert str(info.value).startswith("attention mechanism 'typo' of plugin 'sloppy': factory")
    assert "No module named 'sloppy_mechanisms.attentoin'" in str(info.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("extradim", "context for a \\[B, Dq\\] query has shape"),
        ("baretensor", "forward must return \\(context, weights\\)"),
        ("ignoresmask", "padding positions \\(mask False\\) must get weight exactly 0"),
    ],
)
def test_the_kit_finds_each_mistake(mistakes: PluginHost, name: str, message: str) -> None:
    with pytest.raises(ContractViolation, match=message):
        check_mechanism(name, query_dim=4, key_dim=4)


class GoodCosine(Attention):
    """A correct third-party mechanism written against the README alone."""

    def forward(  # type: ignore[override]
        self, query: Tensor, keys: Tensor, values: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        single = query.dim() == 2
        q = query[:, None] if single else query
        scores = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(keys, dim=-1).transpose(1, 2)
        weights = masked_softmax(scores, None if mask is None else mask[:, None, :])
        context = weights @ (keys if values is None else values)
        return (context[:, 0], weights[:, 0]) if single else (context, weights)


def test_the_kit_passes_a_correct_class_without_registering_it() -> None:
    assert check_mechanism(GoodCosine, query_dim=4, key_dim=4)[-1] == "check_safetensors_round_trip"


def test_plugins_check_reports_per_plugin(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sloppy_mechanisms.py").write_text(MISTAKES)
    (site / "sloppy_plugin.py").write_text(
        "from vlattn import hookimpl\nfrom vlattn.registry import AttentionSpec\n"
        "@hookimpl\ndef register_attention(register):\n"
        "    register(AttentionSpec('extradim', 'sloppy_mechanisms:ExtraDim'))\n"
        "    register(AttentionSpec('typo', 'sloppy_mechanisms.attentoin:Cosine'))\n"
        "@hookimpl\ndef register_task(register):\n    pass\n"
    )
    write_distribution(site, "vlattn-sloppy", "0.0.1", {"sloppy": "sloppy_plugin"})
    env = subprocess_env({"PYTHONPATH": str(site), "VLATTN_PLUGINS": BUILTIN_PLUGINS + ",sloppy"})
    proc = subprocess.run(
        [sys.executable, "-m", "vlattn", "plugins", "--check", "--json"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert all(rows[name]["ok"] for name in BUILTIN_PLUGINS.split(","))
    failed = rows["sloppy"]["failed"]
    assert any("unknown hook 'register_task'; did you mean 'register_tasks'?" in f for f in failed)
    assert any("'extradim'" in f and "context for a [B, Dq] query has shape (3, 1, 8)" in f for f in failed)
    assert any("'typo'" in f and "No module named 'sloppy_mechanisms.attentoin'" in f for f in failed)
    text = subprocess.run(
        [sys.executable, "-m", "vlattn", "plugins", "--check"], capture_output=True, text=True, env=env
    )
    assert "sloppy (vlattn-sloppy 0.0.1): FAILED" in text.stdout and "Traceback" not in text.stderr


def test_a_wrong_output_surfaces_at_the_mechanism_inside_the_captioner(mistakes: PluginHost) -> None:
    from vlattn_caption.task import CaptionConfig, CaptionTask

    from vlattn.config import from_mapping

    config = from_mapping(
        CaptionConfig,
        {
            "synthetic_train": 4,
            "synthetic_val": 1,
            "image_size": 32,
            "grid": 4,
            "cnn_channels": 8,
            "embed_dim": 8,
            "hidden_dim": 16,
            "attention": "extradim",
        },
    )
    task = CaptionTask(config)
    splits = task.setup_data()
    model = task.build_model()
    batch = task.collate([splits.train[i] for i in range(2)])
    expected = r"'extradim' of plugin 'sloppy': context has shape \(2, 1, 10\), expected \(2, 10\)"
    with pytest.raises(PluginContractError, match=expected):
        task.training_step(model, batch)
