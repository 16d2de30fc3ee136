"""The benchmark script runs and prints the promised JSON lines (slow: it really times things)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_attention.py"


@pytest.mark.slow
def test_quick_multihead_bench_reports_the_ratio() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--only", "multihead", "--device", "cpu"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[0]["bench"] == "setup"
    (ratio,) = [r for r in records if r["bench"] == "multihead_vs_torch"]
    assert ratio["ratio_vs_torch"] == pytest.approx(ratio["ours_ms"] / ratio["torch_ms"], rel=0.01)
    assert (ratio["B"], ratio["T"], ratio["E"], ratio["heads"]) == (32, 128, 256, 8)


def test_bad_arguments_are_one_line_errors() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--threads", "0"], capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--threads must be at least 1" in result.stderr
