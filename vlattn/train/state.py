"""Trainer state for an exact resume: optimizer, schedule, scaler, RNG streams and data position.

Saved with ``torch.save`` beside ``last.safetensors`` and read back with ``weights_only=True``, so
no pickle from disk is ever executed. Each process keeps its own RNG file in multi-process runs.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlattn.errors import VlattnError
from vlattn.fileio import atomic_write

STATE_FILE = "trainer_state.pt"


@dataclass
class Progress:
    """Where training stands; saved with every ``last`` checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_value: float | None = None
    evals_without_improvement: int = 0


def rng_file(rank: int) -> str:
    return f"rng_state.rank{rank}.pt"


def capture_rng() -> dict[str, Any]:
    """Every random stream the trainer touches, as tensors and plain values."""
    py_version, py_state, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python_version": py_version,
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": py_gauss,
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    py_state = tuple(int(v) for v in state["python_state"].tolist())
    random.setstate((state["python_version"], py_state, state["python_gauss"]))
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(
    run_dir: Path,
    *,
    progress: Progress,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    rank: int,
    is_main: bool,
) -> None:
    """Write the trainer state (main process) and this process's RNG state, atomically."""
    if is_main:
        state = {
            "progress": asdict(progress),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
        }
        atomic_write(run_dir / STATE_FILE, lambda p: torch.save(state, p))
    rng = capture_rng()
    rng["step"] = progress.step
    atomic_write(run_dir / rng_file(rank), lambda p: torch.save(rng, p))


def read_state_file(path: Path) -> dict[str, Any]:
    """One state file read with ``weights_only=True`` (tensors and plain values only).

    Raises :class:`VlattnError` in one line naming the file: for a file holding other Python
    objects (refused, never unpickled), and for a truncated or corrupt one.
    """
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise VlattnError(
            f"{path} holds Python objects other than tensors and plain values; vlattn does not unpickle "
            "them (it is not a trainer state written by vlattn)"
        ) from None
    except Exception as exc:  # torch reports a damaged zip archive in several ways
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise VlattnError(f"{path} is truncated or corrupt ({reason})") from None
    if not isinstance(state, dict):
        raise VlattnError(f"{path} is not a vlattn trainer state (it holds a {type(state).__name__})")
    return state


def load_state(run_dir: Path, rank: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Read the trainer state and this process's RNG state (``None`` if that file is missing)."""
    path = run_dir / STATE_FILE
    if not path.exists():
        raise VlattnError(f"{run_dir} has no {STATE_FILE}: it is not a resumable run folder")
    state = read_state_file(path)
    missing = [key for key in ("progress", "optimizer", "scheduler", "scaler") if key not in state]
    if missing:
        raise VlattnError(f"{path} is not a vlattn trainer state (no {', '.join(missing)})")
    rng_path = run_dir / rng_file(rank)
    rng = read_state_file(rng_path) if rng_path.exists() else None
    return state, rng
