"""Where metrics go: ``metrics.jsonl`` (one row per log), ``metrics.csv``, TensorBoard when installed."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlattn.data.text import iter_lines, read_text
from vlattn.errors import VlattnError
from vlattn.fileio import atomic_write_text, write_error

JSONL = "metrics.jsonl"
CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run folder's ``metrics.jsonl`` in order (the shared line reader's rules).

    A line that is not a JSON object (a row cut short by a crash) is skipped; a missing file gives
    no rows.
    """
    path = Path(run_dir) / JSONL
    if not path.exists():
        return []
    rows = []
    for line in iter_lines(read_text(path)):
        try:
            row = json.loads(line.text)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def row_step(row: Mapping[str, Any], path: Path) -> int:
    """The ``step`` of a metrics row; a one-line error for a row without a usable one."""
    try:
        return int(row.get("step", 0))
    except (TypeError, ValueError):
        raise VlattnError(f"{path}: a row has step {row.get('step')!r}, not a number") from None


class MetricsLog:
    """Appends metric rows to ``metrics.jsonl`` and keeps ``metrics.csv`` in step with it.

    Rows carry ``step``, ``epoch`` and ``split`` (``train`` or ``val``) plus the metrics.
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool = False) -> None:
        self.run_dir = run_dir
        self.rows: list[dict[str, Any]] = []
        self._writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
            except Exception:  # tensorboard not installed: files only
                self._writer = None

    def resume(self, up_to_step: int) -> None:
        """Reload earlier rows, dropping any logged after the checkpoint being resumed."""
        path = self.run_dir / JSONL
        if not path.exists():
            return
        self.rows.extend(row for row in read_metrics(self.run_dir) if row_step(row, path) <= up_to_step)
        self._rewrite()

    def log(self, step: int, epoch: int, split: str, metrics: Mapping[str, float]) -> None:
        """Record one row."""
        row = {"step": step, "epoch": epoch, "split": split, **{k: _clean(v) for k, v in metrics.items()}}
        self.rows.append(row)
        path = self.run_dir / JSONL
        try:
            with path.open("a", encoding="utf-8") as fh:  # a row cut short by a crash is skipped on reading
                fh.write(json.dumps(row) + "\n")
        except OSError as exc:
            raise write_error(path, exc, existed=True) from None
        self._write_csv()
        if self._writer is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self._writer.add_scalar(f"{split}/{key}", value, step)

    def _rewrite(self) -> None:
        atomic_write_text(self.run_dir / JSONL, "".join(json.dumps(r) + "\n" for r in self.rows))
        self._write_csv()

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns.extend(k for k in row if k not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.run_dir / CSV, buffer.getvalue())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
