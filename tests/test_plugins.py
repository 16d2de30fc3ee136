"""Plugin loading: isolation of broken plugins, allowlist, strict mode, duplicates, suggestions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BUILTIN_PLUGINS, subprocess_env, write_distribution
from vlattn.errors import DuplicateNameError, PluginLoadError, UnknownNameError
from vlattn.plugins import PluginHost
from vlattn.registry import AttentionSpec, Registry

BROKEN = "raise RuntimeError('boom at import')\n"
RECORDING = "import os, pathlib\npathlib.Path(os.environ['MARK_FILE']).write_text('imported')\n"


def make_plugin(tmp_path: Path, dist: str, ep_name: str, module: str, source: str) -> Path:
    site = tmp_path / "site"
    (site / f"{module}.py").parent.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    write_distribution(site, dist, "9.9", {ep_name: module})
    return site


def host_with(monkeypatch: pytest.MonkeyPatch, site: Path, allow: str) -> PluginHost:
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("VLATTN_PLUGINS", allow)
    host = PluginHost()
    host.load_entry_points()
    return host


def test_builtin_plugins_register_through_entry_points() -> None:
    host = PluginHost()
    host.load_entry_points()
    infos = {i.name: i for i in host.plugin_list()}
    assert set(BUILTIN_PLUGINS.split(",")) <= set(infos)
    assert infos["attention"].distribution == "vlattn"
    assert "additive" in infos["attention"].attention


def test_broken_plugin_is_isolated_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site = make_plugin(tmp_path, "vlattn-broken", "broken", "broken_plugin", BROKEN)
    host = host_with(monkeypatch, site, BUILTIN_PLUGINS + ",broken")
    info = host.infos["broken"]
    assert info.error == "RuntimeError: boom at import"
    err = capsys.readouterr().err
    assert "plugin 'broken' (distribution vlattn-broken 9.9) failed to load" in err
    host.ensure_registered()
    assert "additive" in host.attention  # the others still work


def test_strict_mode_reraises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = make_plugin(tmp_path, "vlattn-broken", "broken", "broken_plugin2", BROKEN)
    monkeypatch.setenv("VLATTN_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="vlattn-broken"):
        host_with(monkeypatch, site, "broken")


def test_allowlist_applies_before_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mark = tmp_path / "mark"
    monkeypatch.setenv("MARK_FILE", str(mark))
    site = make_plugin(tmp_path, "vlattn-recording", "recording", "recording_plugin", RECORDING)
    host = host_with(monkeypatch, site, BUILTIN_PLUGINS)
    assert "recording" not in host.infos and not mark.exists()
    monkeypatch.setenv("VLATTN_DISABLE_PLUGINS", "vlattn-recording")  # by distribution name
    host = host_with(monkeypatch, site, BUILTIN_PLUGINS + ",recording")
    assert "recording" not in host.infos and not mark.exists()
    monkeypatch.delenv("VLATTN_DISABLE_PLUGINS")
    host = host_with(monkeypatch, site, BUILTIN_PLUGINS + ",recording")
    assert "recording" in host.infos and mark.exists()


def test_duplicate_name_names_both_plugins() -> None:
    registry: Registry[AttentionSpec] = Registry("attention mechanism")
    registry.add(AttentionSpec("additive", "x:y"), "first")
    with pytest.raises(DuplicateNameError, match="by plugin 'first' and by plugin 'second'"):
        registry.add(AttentionSpec("additive", "x:z"), "second")


def test_duplicate_from_a_plugin_is_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = (
        "from vlattn import hookimpl\nfrom vlattn.registry import AttentionSpec\n"
        "@hookimpl\ndef register_attention(register):\n    register(AttentionSpec('additive', 'm:C'))\n"
    )
    site = make_plugin(tmp_path, "vlattn-dup", "dup", "dup_plugin", source)
    host = host_with(monkeypatch, site, "attention,dup")
    host.ensure_registered()
    assert host.attention.get("additive").plugin == "attention"
    assert "registered twice: by plugin 'attention' and by plugin 'dup'" in (host.infos["dup"].error or "")


def test_unknown_name_suggests_close_matches() -> None:
    registry: Registry[AttentionSpec] = Registry("attention mechanism")
    for name in ("additive", "multihead", "local-p"):
        registry.add(AttentionSpec(name, "x:y"), "p")
    with pytest.raises(UnknownNameError, match="did you mean 'additive'"):
        registry.get("additiv")
    with pytest.raises(UnknownNameError, match="unknown attention mechanism 'zzz'"):
        registry.get("zzz")


def test_cli_reports_broken_plugin(tmp_path: Path) -> None:
    site = make_plugin(tmp_path, "vlattn-broken", "broken", "broken_plugin3", BROKEN)
    env = subprocess_env({"PYTHONPATH": str(site), "VLATTN_PLUGINS": BUILTIN_PLUGINS + ",broken"})
    proc = subprocess.run(
        [sys.executable, "-m", "vlattn", "plugins", "--json"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    infos = {p["name"]: p for p in json.loads(proc.stdout)}
    assert infos["broken"]["error"] == "RuntimeError: boom at import"
    assert infos["broken"]["distribution"] == "vlattn-broken"
    assert "Traceback" not in proc.stderr and "vlattn-broken" in proc.stderr
