"""The plugin host keeps pluggy's contract (argument subsets, call order, wrappers) while each
plugin's failure and each mistake in its hooks stays isolated and is reported by name."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests.conftest import BUILTIN_PLUGINS, subprocess_env, write_distribution
from vlattn.errors import PluginLoadError
from vlattn.plugins import PluginHost

HEADER = "from vlattn import hookimpl\nfrom vlattn.registry import AttentionSpec, TaskSpec\nCALLS = []\n"


def plugin(name: str, source: str) -> types.ModuleType:
    """A plugin module made from ``source`` (with ``hookimpl`` and the spec classes imported)."""
    module = types.ModuleType(name)
    exec(compile(HEADER + source, f"<plugin {name}>", "exec"), module.__dict__)
    return module


def test_an_implementation_may_take_a_subset_of_the_arguments() -> None:
    host = PluginHost()
    subset = plugin(
        "subset",
        "@hookimpl\ndef on_metrics(step, metrics):\n    CALLS.append((step, dict(metrics)))\n"
        "@hookimpl\ndef on_train_end(reason):\n    CALLS.append(reason)\n",
    )
    info = host.add_plugin(subset, "subset")
    host.broadcast("on_metrics", run_dir=Path("r"), step=3, metrics={"loss": 1.0})
    host.broadcast("on_metrics", run_dir=Path("r"), step=4, metrics={"loss": 0.5})
    host.broadcast("on_train_end", run_dir=Path("r"), step=4, reason="finished")
    assert subset.CALLS == [(3, {"loss": 1.0}), (4, {"loss": 0.5}), "finished"]
    assert info.error is None and info.hooks == ["on_metrics", "on_train_end"]


def test_tryfirst_and_trylast_order_the_calls() -> None:
    host = PluginHost()
    log: list[str] = []
    # registered in an order that differs from the requested one
    for name in ("late", "early", "plain"):
        marker = {"early": "tryfirst=True", "late": "trylast=True"}.get(name, "")
        module = plugin(name, f"@hookimpl({marker})\ndef on_train_end(reason):\n    LOG.append({name!r})\n")
        module.LOG = log
        host.add_plugin(module, name)
    host.broadcast("on_train_end", run_dir=Path("r"), step=1, reason="finished")
    assert log == ["early", "plain", "late"]


def test_hook_wrappers_wrap_the_other_implementations() -> None:
    host = PluginHost()
    log: list[str] = []
    inner = plugin("inner", "@hookimpl\ndef on_train_end(reason):\n    LOG.append('inner')\n    return 'value'\n")
    new_style = plugin(
        "new",
        "@hookimpl(wrapper=True)\ndef on_train_end(reason):\n    LOG.append('new before')\n"
        "    result = yield\n    LOG.append(f'new after {result}')\n    return result\n",
    )
    old_style = plugin(
        "old",
        "@hookimpl(hookwrapper=True)\ndef on_train_end():\n    LOG.append('old before')\n"
        "    outcome = yield\n    LOG.append(f'old after {outcome.get_result()}')\n",
    )
    for module in (inner, new_style, old_style):
        module.LOG = log
        host.add_plugin(module, module.__name__)
    host.broadcast("on_train_end", run_dir=Path("r"), step=1, reason="finished")
    assert log == ["old before", "new before", "inner", "new after ['value']", "old after ['value']"]


def test_a_failing_wrapper_disables_only_its_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    host = PluginHost()
    good = plugin("good", "@hookimpl\ndef register_attention(register):\n    register(AttentionSpec('good', 'm:C'))\n")
    bad = plugin(
        "bad",
        "@hookimpl(wrapper=True)\ndef register_attention(register):\n    register(AttentionSpec('bad', 'm:C'))\n"
        "    yield\n    raise RuntimeError('wrapper broke')\n",
    )
    host.add_plugin(good, "good")
    host.add_plugin(bad, "bad")
    host.ensure_registered()
    assert host.attention.names() == ["good"]
    assert host.infos["bad"].error == "RuntimeError: wrapper broke"
    assert "plugin 'bad' raised in register_attention: RuntimeError: wrapper broke" in capsys.readouterr().err


def test_one_failing_plugin_does_not_stop_the_others(capsys: pytest.CaptureFixture[str]) -> None:
    host = PluginHost()
    broken = plugin(
        "broken",
        "@hookimpl\ndef on_metrics(step):\n    raise ValueError('tracker down')\n"
        "@hookimpl\ndef on_train_end(reason):\n    CALLS.append(reason)\n",
    )
    healthy = plugin("healthy", "@hookimpl\ndef on_metrics(step):\n    CALLS.append(step)\n")
    host.add_plugin(broken, "broken", distribution="vlattn-broken", version="1.2")
    host.add_plugin(healthy, "healthy")
    for step in (1, 2):
        host.broadcast("on_metrics", run_dir=Path("r"), step=step, metrics={})
    host.broadcast("on_train_end", run_dir=Path("r"), step=2, reason="finished")
    assert healthy.CALLS == [1, 2]
    assert broken.CALLS == []  # skipped after its failure
    err = capsys.readouterr().err
    assert err.count("vlattn: warning:") == 1
    assert "plugin 'broken' (distribution vlattn-broken 1.2) raised in on_metrics: ValueError: tracker down" in err


def test_a_plugin_that_fails_while_registering_keeps_nothing() -> None:
    host = PluginHost()
    half = plugin(
        "half",
        "@hookimpl\ndef register_attention(register):\n    register(AttentionSpec('half-a', 'm:C'))\n"
        "    raise RuntimeError('second spec broke')\n"
        "@hookimpl\ndef register_tasks(register):\n    register(TaskSpec('half-task', 'm:T'))\n",
    )
    host.add_plugin(half, "half")
    host.ensure_registered()
    assert "half-a" not in host.attention and "half-task" not in host.tasks
    assert host.infos["half"].attention == [] and host.infos["half"].tasks == []


def test_misspelled_hooks_and_unknown_arguments_are_reported_and_the_rest_works(
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = PluginHost()
    sloppy = plugin(
        "sloppy",
        "@hookimpl\ndef register_task(register):\n    pass\n"
        "@hookimpl\ndef on_metrics(step, metrix):\n    pass\n"
        "def on_train_end(reason):\n    pass\n"
        "@hookimpl\ndef register_attention(register):\n    register(AttentionSpec('sloppy', 'm:C'))\n",
    )
    info = host.add_plugin(sloppy, "sloppy")
    host.ensure_registered()
    assert host.attention.names() == ["sloppy"] and info.error is None
    assert info.hooks == ["register_attention"]
    assert any("unknown hook 'register_task'; did you mean 'register_tasks'?" in p for p in info.problems)
    assert any("hook 'on_metrics' has no argument 'metrix'" in p for p in info.problems)
    assert any("'on_train_end' is not decorated with @vlattn.hookimpl" in p for p in info.problems)
    err = capsys.readouterr().err
    assert err.count("vlattn: warning: plugin 'sloppy'") == 3


def test_strict_mode_makes_hook_mistakes_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLATTN_STRICT_PLUGINS", "1")
    host = PluginHost()
    with pytest.raises(PluginLoadError, match="plugin 'typo': implements unknown hook 'register_task'"):
        host.add_plugin(plugin("typo", "@hookimpl\ndef register_task(register):\n    pass\n"), "typo")


def test_registering_something_that_is_not_a_spec_is_reported() -> None:
    host = PluginHost()
    host.add_plugin(plugin("wrong", "@hookimpl\ndef register_tasks(register):\n    register('my-task')\n"), "wrong")
    host.ensure_registered()
    assert "takes a vlattn.registry.TaskSpec" in (host.infos["wrong"].error or "")


def test_a_duplicate_name_fails_the_later_plugin_whatever_the_call_order() -> None:
    import vlattn.attention.plugin as builtin

    host = PluginHost()
    host.add_plugin(builtin, "attention", distribution="vlattn", version="0")
    host.add_plugin(
        plugin(
            "clash", "@hookimpl\ndef register_attention(register):\n    register(AttentionSpec('additive', 'm:C'))\n"
        ),
        "clash",
    )
    host.ensure_registered()
    assert host.attention.get("additive").plugin == "attention"
    assert "by plugin 'attention' and by plugin 'clash'" in (host.infos["clash"].error or "")


def test_a_failing_command_hook_leaves_no_half_added_commands() -> None:
    import click

    host = PluginHost()
    source = (
        "import click\n@hookimpl\ndef register_commands(cli):\n"
        "    cli.add_command(click.Command('half-cmd'))\n    raise RuntimeError('broke')\n"
    )
    host.add_plugin(plugin("cmds", source), "cmds")
    host.add_plugin(
        plugin(
            "ok", "import click\n@hookimpl\ndef register_commands(cli):\n    cli.add_command(click.Command('ok-cmd'))\n"
        ),
        "ok",
    )
    group = click.Group("root")
    host.add_commands(group)
    assert set(group.commands) == {"ok-cmd"}
    assert host.infos["ok"].commands == ["ok-cmd"] and host.infos["cmds"].commands == []


def test_strict_import_failure_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "exploding.py").write_text("import no_such_module_anywhere\n")
    write_distribution(site, "vlattn-exploding", "0.3", {"exploding": "exploding"})
    env = subprocess_env(
        {"PYTHONPATH": str(site), "VLATTN_PLUGINS": BUILTIN_PLUGINS + ",exploding", "VLATTN_STRICT_PLUGINS": "1"}
    )
    proc = subprocess.run([sys.executable, "-m", "vlattn", "list"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("vlattn: error: plugin 'exploding' (distribution vlattn-exploding 0.3) failed to load")
    assert "No module named 'no_such_module_anywhere'" in lines[0]
