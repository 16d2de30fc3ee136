"""The throughput benchmark's reference implementation is the same model as vlattn's DRAW."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from vlattn_draw.model import Draw, DrawShape

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def bench():
    path = REPO / "scripts" / "bench_draw_throughput.py"
    spec = importlib.util.spec_from_file_location("bench_draw_throughput", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_reference_with_vlattns_weights_gives_the_same_loss(bench, one_thread) -> None:
    args = argparse.Namespace(steps=5, read_n=2, write_n=5, lstm=24, z=6, no_attention=False)
    torch.manual_seed(0)
    model = Draw(DrawShape(steps=5, read_n=2, write_n=5, enc_size=24, dec_size=24, z_size=6))
    with torch.no_grad():  # make every part of the network matter (writes start at zero otherwise)
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)  # (larger weights saturate sigmoid(c_T), where BCELoss clamps)
    for name in ("canvas0", "h_enc0", "h_dec0"):
        assert not getattr(model, name).any()
    reference = bench.ReferenceDraw(args)
    bench.copy_weights(reference, model)
    # the same matrices: vlattn adds learned initial states (784 + 24 + 24), nn.LSTMCell a second bias
    ours_count = sum(p.numel() for p in model.parameters()) - (784 + 24 + 24) + 4 * 24
    assert sum(p.numel() for p in reference.parameters()) == ours_count
    x = (torch.rand(6, 1, 28, 28) > 0.7).float()
    torch.manual_seed(1)
    out = model(x)
    ours = (out.reconstruction + out.kl).mean()
    torch.manual_seed(1)
    theirs = reference.loss(x.view(6, -1))
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-3)
    assert out.kl.detach().mean().item() > 0.5  # the KL part was exercised too


def test_benchmark_runs_every_implementation_and_prints_ratios(bench, one_thread, monkeypatch, capsys) -> None:
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "bench",
            "--steps",
            "3",
            "--lstm",
            "16",
            "--z",
            "4",
            "--batch-size",
            "4",
            "--repeats",
            "2",
            "--with-autograd",
            "--without-native",
        ],
    )
    bench.main()
    printed = capsys.readouterr().out
    for name in ("vlattn ", "reference ", "vlattn-autograd ", "vlattn-pytorch "):
        assert name in printed
    assert "ratio vlattn / reference:" in printed and "ratio vlattn / vlattn-autograd:" in printed
    assert "native kernels: " in printed


# A stand-in with the public draw.py's interface (its parser, DRAW(args) -> (d, q), loss_fn): the
# benchmark only drives these.
STAND_IN_DRAW = """
import argparse
import torch
import utils  # the real one needs tensorboardX; the benchmark supplies a placeholder

parser = argparse.ArgumentParser()
parser.add_argument("--time_steps", type=int, default=32)
parser.add_argument("--z_size", type=int, default=100)
parser.add_argument("--lstm_size", type=int, default=256)
parser.add_argument("--read_size", type=int, default=2)
parser.add_argument("--write_size", type=int, default=5)
parser.add_argument("--use_read_attn", action="store_true")
parser.add_argument("--use_write_attn", action="store_true")
parser.add_argument("--lr", type=float, default=1e-3)


class DRAW(torch.nn.Module):
    def __init__(self, args):
        super().__init__()
        self.linear = torch.nn.Linear(784, 784)

    def forward(self, x):
        return torch.distributions.Bernoulli(logits=self.linear(x)), None


def loss_fn(d, q, x, writer=None, step=None):
    return -d.log_prob(x).sum(1).mean()
"""


def test_benchmark_times_an_anchor_checkout_interleaved(bench, one_thread, tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "draw.py").write_text(STAND_IN_DRAW)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "bench",
            "--workload",
            "default",
            "--lstm",
            "256",
            "--batch-size",
            "2",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--anchor-repo",
            str(tmp_path),
            "--steps",
            "1",
        ],
    )
    args = bench.parse_args()
    assert (args.steps, args.no_attention) == (32, True)  # the workload's sizes win over --steps
    utils_before = sys.modules.get("utils")
    module = bench.load_anchor(tmp_path)
    assert sys.modules.get("utils") is utils_before  # its placeholder is gone once it has loaded
    step = bench.anchor_step(module, bench.WORKLOADS["default"][0], args)
    step(torch.bernoulli(torch.full((2, 1, 28, 28), 0.5)))
    times = bench.time_interleaved({"vlattn": lambda x: None, "anchor": step}, torch.zeros(2, 1, 28, 28), 3, 0)
    assert [len(values) for values in times.values()] == [3, 3]
    bench.report(times, 2)
    assert "ratio vlattn / anchor:" in capsys.readouterr().out


def test_anchor_with_other_sizes_or_no_checkout_is_a_one_line_error(bench, tmp_path) -> None:
    with pytest.raises(SystemExit, match=r"^vlattn: error: no draw\.py"):
        bench.load_anchor(tmp_path)
    (tmp_path / "draw.py").write_text(STAND_IN_DRAW)
    args = bench.parse_args(["--workload", "default", "--lstm", "128"])
    with pytest.raises(SystemExit, match=r"^vlattn: error: .* other sizes"):
        bench.anchor_step(bench.load_anchor(tmp_path), bench.WORKLOADS["default"][0], args)
