"""The plugin guide's snippets in the README run as they are, and do what the guide says."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")


def guide_snippets() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Writing a plugin") : text.index("### Loading rules")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_guide_has_a_snippet_per_extension_point() -> None:
    snippets = guide_snippets()
    joined = "\n".join(snippets)
    for name in (
        "def register_attention",
        "class ScaledCosine(Attention)",
        "class ParityTask(Task)",
        "def register_commands",
        "def on_metrics",
        "def register_views",
        "check_mechanism(",
        "check_task(",
    ):
        assert name in joined, name
    assert len(snippets) == 6


def test_the_guide_snippets_run_and_keep_their_promises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import click

    from vlattn.plugins import PluginHost

    monkeypatch.chdir(tmp_path)
    namespaces = []
    for i, snippet in enumerate(guide_snippets()):
        module = types.ModuleType(f"readme_snippet_{i}")  # a real module: dataclasses look it up
        monkeypatch.setitem(sys.modules, module.__name__, module)
        code = compile(snippet, f"README.md plugin guide snippet {i + 1}", "exec", dont_inherit=True)
        exec(code, module.__dict__)
        namespaces.append(module.__dict__)
    commands = next(ns for ns in namespaces if "parity_command" in ns)
    host = PluginHost()
    module = type("Snippet", (), {"register_commands": staticmethod(commands["register_commands"])})
    host.add_plugin(module, "readme")
    group = click.Group("vlattn")
    host.add_commands(group)
    assert CliRunner().invoke(group, ["parity", "0111"]).output == "1\n"
    events = next(ns for ns in namespaces if "on_metrics" in ns)
    host.add_plugin(type("Events", (), {k: staticmethod(events[k]) for k in ("on_metrics", "on_train_end")}), "ev")
    assert host.infos["ev"].problems == [] and host.infos["ev"].hooks == ["on_metrics", "on_train_end"]
    views = next(ns for ns in namespaces if "ParityView" in ns)
    found: list = []
    views["register_views"](found.append)
    assert [v.name for v in found] == ["parity"] and found[0].routes[0].path == "/api/parity"
    from vlattn.serve import ApiInput

    handler = views["ParityView"]({})
    assert handler.parity([handler.parse(ApiInput({"bits": "0111"}))]) == [{"bits": "0111", "odd": True}]
