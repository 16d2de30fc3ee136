"""``vlattn train draw`` / ``vlattn eval`` on a tiny model and data, and the bundled training recipe."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vlattn.cli import build_cli

REPO = Path(__file__).resolve().parents[3]
TINY = ["--steps", "3", "--enc-size", "16", "--dec-size", "16", "--z-size", "4", "--read-n", "2", "--write-n", "3"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small binarized-MNIST-shaped file: 64 / 32 / 24 random sparse binary images."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "small.npz"
    arrays = {
        f"X_{k}": (rng.random((n, 784)) < 0.2).astype(np.float32)
        for k, n in (("train", 64), ("valid", 32), ("test", 24))
    }
    np.savez(path, **arrays)
    return path


def cli(*args: str):
    return CliRunner().invoke(build_cli(), list(args))


@pytest.fixture(scope="module")
def run_dir(npz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "draw"
    result = cli(
        "train",
        "draw",
        "--data-path",
        str(npz),
        *TINY,
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--log-every",
        "1",
        "--threads",
        "1",
        "--quiet",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    return out


def test_training_logs_reconstruction_and_kl_in_nats(run_dir: Path) -> None:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert len(train) == 8 and len(val) == 2
    for row in train:
        # the loss is the negative ELBO per image, in nats: reconstruction + KL
        assert row["loss"] == pytest.approx(row["reconstruction"] + row["kl"], rel=1e-5)
        assert row["kl"] >= 0
    assert val[0]["images"] == 32
    assert val[-1]["nll_bound"] == pytest.approx(val[-1]["reconstruction"] + val[-1]["kl"])
    assert (run_dir / "best.safetensors").is_file()


def test_eval_reports_the_bound_and_the_importance_weighted_bound(run_dir: Path) -> None:
    torch.manual_seed(0)
    plain = cli("eval", str(run_dir), "--json")
    assert plain.exit_code == 0, plain.output
    metrics = json.loads(plain.output)
    assert metrics["images"] == 24  # the test split by default
    assert "iw_nll" not in metrics
    assert 0.3 * 784 * math.log(2) < metrics["nll_bound"] < 1.2 * 784 * math.log(2)

    iw = cli("eval", str(run_dir), "--json", "--iw-samples", "16", "--iw-chunk", "8")
    assert iw.exit_code == 0, iw.output
    both = json.loads(iw.output)
    assert both["iw_samples"] == 16 and both["images"] == 24
    # the importance-weighted bound is tighter; the ELBO itself is a one-sample estimate here
    assert both["iw_nll"] < both["nll_bound"] + 1.0

    text = cli("eval", str(run_dir), "--iw-samples", "2")
    assert text.exit_code == 0 and "iw_nll" in text.output and "iw_samples" in text.output


def test_eval_bad_iw_samples_is_a_one_line_error(run_dir: Path) -> None:
    result = cli("eval", str(run_dir), "--iw-samples", "-1")
    assert result.exit_code != 0
    assert "iw-samples" in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0


def test_the_bundled_recipe_trains_with_the_common_trainer(npz: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("train_draw_bundled", REPO / "scripts" / "train_draw_bundled.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "m.safetensors"
    module.main(
        [
            "--data-path",
            str(npz),
            "--run-dir",
            str(tmp_path / "run"),
            "--out",
            str(out),
            "--steps",
            "2",
            "--epochs",
            "1",
            "--iw-samples",
            "2",
            "--batch-size",
            "32",
        ]
    )
    from vlattn.checkpoint import read_header

    header = read_header(out)
    assert header.task == "draw"
    assert header.info["test_images"] == 24 and "test_iw_nll_k2" in header.info
    assert header.config["steps"] == 2 and header.config["read_n"] == 2 and header.config["write_n"] == 5
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
