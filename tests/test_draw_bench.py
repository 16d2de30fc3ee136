"""The throughput benchmark's reference implementation is the same model as vlattn's DRAW."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from vlattn_draw.model import Draw, DrawShape

REPO = Path(__file__).resolve().parents[1]


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
        sys, "argv",
        ["bench", "--steps", "3", "--lstm", "16", "--z", "4", "--batch-size", "4", "--repeats", "2",
         "--with-autograd", "--without-native"],
    )
    bench.main()
    printed = capsys.readouterr().out
    for name in ("vlattn ", "reference ", "vlattn-autograd ", "vlattn-pytorch "):
        assert name in printed
    assert "ratio vlattn / reference:" in printed and "ratio vlattn / vlattn-autograd:" in printed
    assert "native kernels: " in printed
