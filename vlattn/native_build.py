"""Optional native kernels: C sources compiled on first use and loaded with :mod:`ctypes`.

Plugins ship a C file beside their Python code and call :func:`load_library` on it. The first call
compiles it with the system's C compiler (``$CC``, else ``cc``) for this machine
(``-O3 -march=native``) into a per-user cache (``$VLATTN_CACHE`` or ``~/.cache/vlattn``, under
``native/``), keyed by the source, the compiler, its flags and the processor, so later processes load
it at once. The compiled file is moved into place atomically: concurrent processes never see a
half-written library.

Native kernels are an acceleration only: whenever there is no compiler, the compilation fails or
``VLATTN_NATIVE=0`` is set, :func:`load_library` returns ``None`` (saying why once, in the log) and
callers use their plain PyTorch code.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path

from vlattn.fileio import atomic_path

__all__ = ["cache_dir", "compile_flags", "disabled", "load_library"]

log = logging.getLogger(__name__)

_LOADED: dict[Path, ctypes.CDLL | None] = {}
_BUILD_SECONDS = 300  # a compiler that takes longer is given up on


def compile_flags() -> list[str]:
    """Flags of every native build: a shared library tuned for the processor it runs on, with the
    floating-point freedoms that let loops and reductions vectorise (reassociation, finite values,
    no ``errno``). ``-ffast-math`` itself is avoided: linked into a shared library it can switch the
    whole process to flushing denormals."""
    return [
        "-O3",
        "-march=native",
        "-funroll-loops",
        "-std=c11",
        "-fPIC",
        "-shared",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-fassociative-math",
        "-fno-signed-zeros",
        "-ffinite-math-only",
    ]


def disabled() -> bool:
    """Whether native kernels are switched off (``VLATTN_NATIVE=0``)."""
    return os.environ.get("VLATTN_NATIVE", "1").strip().lower() in {"0", "false", "no", "off"}


def cache_dir() -> Path:
    """Where compiled libraries are kept: ``$VLATTN_CACHE/native`` or ``~/.cache/vlattn/native``."""
    root = os.environ.get("VLATTN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "vlattn"
    )
    return Path(root) / "native"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def _processor() -> str:
    """The processor's identity and features (``-march=native`` builds differ between processors)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in text.splitlines() if line.startswith(wanted)}))


def _build(source: Path, compiler: str) -> Path:
    """Compile ``source`` unless a build for this source, compiler and processor is cached."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False, timeout=60).stdout
    key = hashlib.sha256(
        "\0".join([source.read_text(), compiler, version, *compile_flags(), platform.machine(), _processor()]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    with atomic_path(target) as tmp:
        result = subprocess.run(
            [compiler, *compile_flags(), str(source), "-o", str(tmp), "-lm"],
            capture_output=True,
            text=True,
            check=False,
            timeout=_BUILD_SECONDS,
        )
        if result.returncode != 0:
            first = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip())
            raise RuntimeError(f"{compiler} failed on {source.name}: {first}")
    return target


def load_library(source: str | Path) -> ctypes.CDLL | None:
    """The compiled C library of ``source``, or ``None`` where native kernels are unavailable
    (disabled, no compiler, a failed build); the reason is logged once per source."""
    source = Path(source).resolve()
    if disabled():
        return None
    if source in _LOADED:
        return _LOADED[source]
    library = None
    compiler = _compiler()
    if compiler is None:
        log.info("no C compiler found: %s runs without native kernels", source.name)
    else:
        try:
            library = ctypes.CDLL(str(_build(source, compiler)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            log.warning("native kernels of %s unavailable (%s); using the PyTorch code", source.name, error)
    _LOADED[source] = library
    return library
