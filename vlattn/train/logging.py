"""Where metrics go: ``metrics.jsonl`` (one row per log), ``metrics.csv``, TensorBoard when installed."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlattn.fileio import atomic_write_text

JSONL = "metrics.jsonl"
CSV = "metrics.csv"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


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

                self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: files only
                self._writer = None

    def resume(self, up_to_step: int) -> None:
        """Reload earlier rows, dropping any logged after the checkpoint being resumed."""
        path = self.run_dir / JSONL
        if not path.exists():
            return
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if int(row.get("step", 0)) <= up_to_step:
                self.rows.append(row)
        self._rewrite()

    def log(self, step: int, epoch: int, split: str, metrics: Mapping[str, float]) -> None:
        """Record one row."""
        row = {"step": step, "epoch": epoch, "split": split, **{k: _clean(v) for k, v in metrics.items()}}
        self.rows.append(row)
        with (self.run_dir / JSONL).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
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
