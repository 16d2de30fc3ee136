"""Atomic file writes: a reader never sees a half-written file, an interrupted write keeps the old one.

Every file vlattn writes (model files, trainer state, ``config.json``, metrics, datasets, GIFs and
PNGs) goes through :func:`atomic_path`: the data goes to a temporary file beside the target, is
flushed to disk, then renamed over the target in one step. A crash, ``kill -9`` or a full disk at any
moment leaves either the old file or the new one, never a mixture. The new file gets the usual
permissions (``0o666`` less the umask, or the mode of the file it replaces), not the ``0o600`` of a
temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from vlattn.errors import VlattnError

SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT)


class WriteError(VlattnError, OSError):
    """A file could not be written (disk full, no permission ...); the previous file, if any, is intact.

    An :class:`OSError` too, so code that handles failed writes as such keeps doing so.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(target: Path) -> int:
    """The permission bits a new version of ``target`` gets: those of the file it replaces, else
    ``0o666`` less the umask (what ``open(path, "w")`` would give)."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def write_error(target: Path, exc: OSError, existed: bool) -> WriteError:
    """A one-line :class:`WriteError` for ``exc`` raised while writing ``target``."""
    if exc.errno in SPACE_ERRORS:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is exceeded"
    else:
        reason = exc.strerror or str(exc) or type(exc).__name__
    kept = f"the previous {target} is intact" if existed else f"no {target.name} was written"
    return WriteError(f"cannot write {target}: {reason}; {kept}")


def sync_directory(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename just made) to disk, where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Raises :class:`WriteError` (naming the file and saying whether the previous version survives)
    when the disk is full or the file cannot be written for another system reason.
    """
    target = Path(path)
    existed = target.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(target, exc, existed) from None
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
        except OSError as exc:
            raise write_error(target, exc, existed) from None
        except RuntimeError as exc:  # some writers (safetensors) report a full disk as a RuntimeError
            if "No space left" in str(exc) or "os error 28" in str(exc):
                raise write_error(target, OSError(errno.ENOSPC, "No space left on device"), existed) from None
            raise
        try:
            os.chmod(tmp, new_file_mode(target))
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            sync_directory(target.parent)
        except OSError as exc:
            raise write_error(target, exc, existed) from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
