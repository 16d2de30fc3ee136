"""Training throughput of DRAW on CPU (images/s), optionally side by side with a public implementation.

    OMP_NUM_THREADS=1 python scripts/bench_draw_throughput.py --threads 1
    OMP_NUM_THREADS=1 python scripts/bench_draw_throughput.py --threads 1 \
        --reference /tmp/ref_draw/draw.py     # kamenbliznashki/generative_models draw.py

One training step = forward + loss + backward + gradient clipping + Adam update on a batch of
binary 28x28 images, at the paper's configuration by default (T = 64, read 2x2, write 5x5,
LSTM 256, z 100, batch 128). Steps of the two implementations alternate, so both see the same
machine load; the script prints the median images/s of each and their ratio.

``--reference`` takes the path of the ``draw.py`` of kamenbliznashki/generative_models (PyTorch,
MIT licence), fetched by the user; this script only drives its ``DRAW`` module and ``loss_fn``
and never ships its code.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from vlattn_draw.model import Draw, DrawShape

Step = Callable[[torch.Tensor], None]


def vlattn_step(args: argparse.Namespace) -> Step:
    """One training step of vlattn's DRAW."""
    model = Draw(DrawShape(
        steps=args.steps, read_n=args.read_n, write_n=args.write_n, enc_size=args.lstm,
        dec_size=args.lstm, z_size=args.z, read_attention=not args.no_attention,
        write_attention=not args.no_attention,
    ))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x: torch.Tensor) -> None:
        out = model(x)
        loss = (out.reconstruction + out.kl).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()

    return step


def reference_step(path: Path, args: argparse.Namespace) -> Step:
    """One training step of the reference ``draw.py`` (its model and loss, same settings)."""
    sys.modules.setdefault("utils", types.ModuleType("utils"))  # its helpers need tensorboardX; unused here
    spec = importlib.util.spec_from_file_location("reference_draw", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    options = argparse.Namespace(
        image_dims=(1, 28, 28), time_steps=args.steps, z_size=args.z, lstm_size=args.lstm,
        read_size=args.read_n, write_size=args.write_n, use_read_attn=not args.no_attention,
        use_write_attn=not args.no_attention,
    )
    model = module.DRAW(options)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x: torch.Tensor) -> None:
        flat = x.view(x.shape[0], -1)
        d, q = model(flat)
        loss = module.loss_fn(d, q, flat)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64, help="T")
    parser.add_argument("--read-n", type=int, default=2)
    parser.add_argument("--write-n", type=int, default=5)
    parser.add_argument("--lstm", type=int, default=256)
    parser.add_argument("--z", type=int, default=100)
    parser.add_argument("--no-attention", action="store_true")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per implementation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference", type=Path, default=None, help="path of the reference draw.py")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = (torch.rand(args.batch_size, 1, 28, 28) > 0.5).float()
    steps = {"vlattn": vlattn_step(args)}
    if args.reference is not None:
        steps["reference"] = reference_step(args.reference, args)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        step(x)
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step(x)
            times[name].append(time.perf_counter() - start)
    config = (
        f"T={args.steps} read {args.read_n}x{args.read_n} write {args.write_n}x{args.write_n} "
        f"LSTM {args.lstm} z {args.z} batch {args.batch_size} threads {args.threads}"
        + (" no attention" if args.no_attention else "")
    )
    print(config)
    rates = {}
    for name, values in times.items():
        rates[name] = args.batch_size / statistics.median(values)
        print(f"{name:10s} {rates[name]:8.1f} images/s  (median of {len(values)} steps)")
    if "reference" in rates:
        print(f"ratio vlattn / reference: {rates['vlattn'] / rates['reference']:.2f}x")


if __name__ == "__main__":
    main()
