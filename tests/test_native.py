"""Native kernels: compiled once per source and machine, cached, and optional."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import pytest
import torch

from vlattn import native_build

needs_compiler = pytest.mark.skipif(native_build._compiler() is None, reason="no C compiler")

SOURCE = (
    "double vl_scaled_sum(const double *x, long n, double scale) {\n"
    "    double total = 0.0;\n    for (long i = 0; i < n; ++i) total += x[i];\n    return scale * total;\n}\n"
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VLATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VLATTN_NATIVE", raising=False)
    monkeypatch.setattr(native_build, "_LOADED", {})
    return tmp_path / "cache" / "native"


def _source(tmp_path: Path, text: str = SOURCE, name: str = "scaled.c") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@needs_compiler
def test_compiles_loads_and_calls(tmp_path: Path, cache: Path) -> None:
    library = native_build.load_library(_source(tmp_path))
    assert library is not None
    function = library.vl_scaled_sum
    function.argtypes, function.restype = [ctypes.c_void_p, ctypes.c_long, ctypes.c_double], ctypes.c_double
    values = torch.arange(10, dtype=torch.float64)
    assert function(values.data_ptr(), 10, 0.5) == pytest.approx(22.5)
    builds = list(cache.glob("scaled-*.so"))
    assert len(builds) == 1
    assert not list(cache.glob(".*.tmp"))  # the build was moved into place, nothing half-written left


@needs_compiler
def test_a_cached_build_is_reused_and_a_changed_source_rebuilt(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _source(tmp_path)
    assert native_build.load_library(source) is not None
    (build,) = cache.glob("scaled-*.so")
    monkeypatch.setattr(native_build, "_LOADED", {})  # a new process
    calls = []
    real_run = native_build.subprocess.run
    monkeypatch.setattr(native_build.subprocess, "run", lambda args, **kw: calls.append(args) or real_run(args, **kw))
    assert native_build.load_library(source) is not None
    assert all("-o" not in args for args in calls)  # only the compiler's version was asked
    source.write_text(SOURCE.replace("scale * total", "scale * total + 1.0"))
    monkeypatch.setattr(native_build, "_LOADED", {})
    assert native_build.load_library(source) is not None
    assert len(list(cache.glob("scaled-*.so"))) == 2 and build.exists()


def test_disabled_by_the_environment(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLATTN_NATIVE", "0")
    assert native_build.disabled()
    assert native_build.load_library(_source(tmp_path)) is None
    assert not cache.exists()


@needs_compiler
def test_a_failed_build_falls_back_with_one_warning(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _source(tmp_path, "this is not C;\n", name="broken.c")
    with caplog.at_level(logging.WARNING, logger="vlattn.native_build"):
        assert native_build.load_library(source) is None
        assert native_build.load_library(source) is None
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and "broken.c" in messages[0] and "error" in messages[0]
    assert not list(cache.glob("*.so")) and not list(cache.glob(".*.tmp"))


def test_no_compiler_means_no_library(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_build, "_compiler", lambda: None)
    assert native_build.load_library(_source(tmp_path)) is None


@needs_compiler
def test_loading_kernels_keeps_denormal_numbers(tmp_path: Path, cache: Path) -> None:
    """The build flags must not switch the process to flush-to-zero (what ``-ffast-math`` can do)."""
    assert native_build.load_library(_source(tmp_path)) is not None
    tiny = torch.tensor(1e-39, dtype=torch.float32)  # below float32's smallest normal number
    assert (tiny * 1.5).item() > 0.0


@needs_compiler
def test_an_unusable_cache_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("VLATTN_CACHE", str(blocker))
    monkeypatch.setattr(native_build, "_LOADED", {})
    assert native_build.load_library(_source(tmp_path)) is None
