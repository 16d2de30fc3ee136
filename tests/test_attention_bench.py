"""The benchmark script runs and prints the promised JSON lines (slow: it really times things)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    ratios = [r for r in records if r["bench"] == "multihead_vs_torch"]
    assert {(r["threads"], r["need_weights"]) for r in ratios} == {(1, True), (1, False), (2, True), (2, False)}
    for ratio in ratios:
        assert (ratio["B"], ratio["T"], ratio["E"], ratio["heads"], ratio["pairs"]) == (32, 128, 256, 8, 10)
        assert ratio["speedup"] > 0 and ratio["ours_ms"] > 0 and ratio["torch_ms"] > 0


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_comparison_does_the_same_work_on_both_sides(need_weights: bool) -> None:
    """One step of each leaves the same gradients on the weights and on the input."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_attention
    finally:
        sys.path.remove(str(SCRIPT.parent))
    pair = bench_attention.multihead_pair(torch.device("cpu"), need_weights)
    assert 0.2 < float(pair.padding.float().mean()) < 0.3  # lengths uniform in 64..128
    pair.ours_step()
    pair.theirs_step()
    close = {"atol": 1e-4, "rtol": 1e-4}
    torch.testing.assert_close(pair.x_ours.grad, pair.x_theirs.grad, **close)
    theirs = dict(pair.theirs.named_parameters())
    for name, param in pair.ours.named_parameters():
        torch.testing.assert_close(param.grad, theirs[name].grad, **close, msg=name)


def test_bad_arguments_are_one_line_errors() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--threads", "0"], capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--threads must be at least 1" in result.stderr
