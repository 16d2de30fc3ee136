"""Test isolation: only the built-in plugins are visible unless a test exposes more."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
EXAMPLE_SRC = REPO / "examples" / "vlattn-example"
BUILTIN_PLUGINS = "attention,text,caption,draw"

# Applied before any test imports vlattn's plugin host: the user's own plugins stay invisible.
os.environ["VLATTN_PLUGINS"] = BUILTIN_PLUGINS
os.environ.pop("VLATTN_DISABLE_PLUGINS", None)
os.environ.pop("VLATTN_STRICT_PLUGINS", None)


def write_distribution(site: Path, name: str, version: str, entry_points: dict[str, str]) -> Path:
    """Make ``site`` hold an installed distribution's metadata, as ``pip install`` would."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[vlattn]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return info


@pytest.fixture
def fresh_host() -> Iterator[None]:
    """Reload plugins from entry points before and after the test."""
    from vlattn.plugins import set_host

    set_host(None)
    yield
    set_host(None)


@pytest.fixture
def example_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Expose ``examples/vlattn-example`` as a real installed distribution.

    Yields the environment (``PYTHONPATH``, ``VLATTN_PLUGINS``) a subprocess needs to see it; the
    current process sees it too.
    """
    from vlattn.plugins import set_host

    site = tmp_path / "site"
    write_distribution(site, "vlattn-example", "0.1.0", {"example": "vlattn_example.plugin"})
    paths = [str(site), str(EXAMPLE_SRC)]
    for p in paths:
        monkeypatch.syspath_prepend(p)
    allow = BUILTIN_PLUGINS + ",example"
    monkeypatch.setenv("VLATTN_PLUGINS", allow)
    set_host(None)
    env = {
        "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "VLATTN_PLUGINS": allow,
    }
    yield env
    set_host(None)
    for mod in [m for m in sys.modules if m.startswith("vlattn_example")]:
        del sys.modules[mod]


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for running ``python -m vlattn`` in a subprocess during tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test on one torch thread (faster for tiny models on a shared CPU), then restore."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def toy_host() -> Iterator[object]:
    """A plugin host with the built-in plugins and the test-only toy tasks (``tests/toy_tasks.py``)."""
    from tests.toy_tasks import ToyPlugin
    from vlattn.plugins import PluginHost, set_host

    host = PluginHost()
    host.load_entry_points()
    host.add_plugin(ToyPlugin, "toy")
    set_host(host)
    yield host
    set_host(None)
