"""torchrun: two CPU processes on gloo train the same weights as one process with twice the batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.conftest import subprocess_env

COMMON = ["find-marker", "--epochs", "0", "--max-steps", "12", "--eval-every", "6", "--quiet", "--no-tensorboard"]


def test_two_processes_match_one(example_plugin: dict[str, str], tmp_path: Path) -> None:
    env = subprocess_env(example_plugin)
    single = subprocess.run(
        [sys.executable, "-m", "vlattn", "train", *COMMON, "--batch-size", "32", "--out", str(tmp_path / "one")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    multi = subprocess.run(
        [*torchrun, "-m", "vlattn", "train", *COMMON, "--batch-size", "16", "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert multi.returncode == 0, multi.stderr[-3000:]
    one, two = (
        load_file(str(tmp_path / "one" / "last.safetensors")),
        load_file(str(tmp_path / "two" / "last.safetensors")),
    )
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-5, msg=key)
    # rank 0 alone logs and saves; each process keeps its own RNG stream for an exact resume
    assert sorted(p.name for p in (tmp_path / "two").glob("rng_state.rank*.pt")) == [
        "rng_state.rank0.pt",
        "rng_state.rank1.pt",
    ]
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if r["split"] == "val"]) == 2
    single_rows = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[-1]["accuracy"] - single_rows[-1]["accuracy"]) < 1e-6
