"""The example third-party plugin, exposed as a real installed distribution."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import subprocess_env


def test_plugin_is_listed_with_its_distribution(example_plugin: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vlattn", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=subprocess_env(example_plugin),
    )
    info = {p["name"]: p for p in json.loads(proc.stdout)}["example"]
    assert info["distribution"] == "vlattn-example" and info["version"] == "0.1.0" and info["error"] is None
    assert info["attention"] == ["cosine"] and info["tasks"] == ["find-marker"]
    assert info["hooks"] == ["register_attention", "register_commands", "register_tasks"]
    assert info["commands"] == ["find-marker"] and info["problems"] == []


def test_mechanisms_cross_plug(example_plugin: dict[str, str]) -> None:
    from vlattn.attention import build_attention
    from vlattn.config import from_mapping
    from vlattn.plugins import task_registry

    cosine = build_attention("cosine", 6, 4)
    context, weights = cosine(torch.randn(3, 6), torch.randn(3, 5, 4), mask=torch.tensor([[1, 1, 0, 0, 0]] * 3).bool())
    assert context.shape == (3, 4) and torch.allclose(weights.sum(-1), torch.ones(3))
    assert (weights[:, 2:] == 0).all()
    task_cls = task_registry().get("find-marker").load()
    task = task_cls(
        from_mapping(task_cls.Config, {"attention": "additive"})
    )  # a built-in mechanism in a plugin's model
    model = task.build_model()
    logits, weights = model(torch.randint(2, 20, (2, 7)), torch.tensor([7, 3]))
    assert logits.shape == (2, 2) and (weights[1, 3:] == 0).all()


def test_example_package_metadata_is_installable() -> None:
    pyproject = (Path(__file__).resolve().parents[1] / "examples" / "vlattn-example" / "pyproject.toml").read_text()
    assert '[project.entry-points.vlattn]\nexample = "vlattn_example.plugin"' in pyproject


def test_the_example_plugins_own_tests_pass(example_plugin: dict[str, str]) -> None:
    """The template's tests (vlattn's contract kit on its mechanism and task, and its command)."""
    tests = Path(__file__).resolve().parents[1] / "examples" / "vlattn-example" / "tests"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tests), str(tests)],
        capture_output=True,
        text=True,
        env=subprocess_env(example_plugin),
        cwd=tests,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "4 passed" in proc.stdout


def test_help_stays_fast_and_torch_free_with_the_plugin_installed(example_plugin: dict[str, str]) -> None:
    code = (
        "import sys, time, contextlib; t = time.perf_counter(); from vlattn.cli import main\n"
        "with contextlib.suppress(SystemExit): main(['--help'])\n"
        "print(time.perf_counter() - t, 'torch' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(example_plugin)
    )
    assert proc.returncode == 0, proc.stderr
    assert "find-marker" in proc.stdout
    _elapsed, torch_loaded = proc.stdout.strip().splitlines()[-1].split()
    assert torch_loaded == "False"
