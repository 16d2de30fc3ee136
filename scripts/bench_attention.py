"""Benchmark the attention mechanisms: forward + backward time, and memory, on CPU (and GPU).

Prints one JSON object per line:

* ``{"bench": "mechanism", ...}``: every registered built-in mechanism at one size.
* ``{"bench": "multihead_vs_torch", ..., "speedup": x}``: our ``multihead`` against
  ``torch.nn.MultiheadAttention`` with the same weights on one workload: self-attention,
  B=32, T=128, E=256, 8 heads, training mode, dropout 0, a key padding mask (lengths uniform in
  64..128), ``out.backward(grad_out)`` with a fixed upstream gradient, the gradients of the
  weights and of the input reset before every call. One record per ``need_weights`` (True is
  PyTorch's default: head-averaged weights are returned) and per thread count (1 and 2). The
  two run call by call in alternation in this one process after 5 warm-up calls each;
  ``speedup`` is the median over the pairs of PyTorch's time divided by ours (> 1: ours faster).
* ``{"bench": "length_scaling", ...}``: ``local-p`` (window D=10) against global attention
  with the same ``general`` score, for a query sequence as long as the source, S = 128 .. 4096.
  ``saved_mb`` is the memory autograd keeps for the backward pass (tensors saved by the
  forward, counted once per storage); ``peak_mb`` is the GPU's peak allocation when on GPU.

Usage::

    python scripts/bench_attention.py --quick            # a few minutes on two CPU cores
    python scripts/bench_attention.py --only multihead   # ours vs nn.MultiheadAttention at 1 and 2 threads
    python scripts/bench_attention.py --threads 4 --device cpu
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vlattn.attention.local import LocalPredictiveAttention
from vlattn.attention.luong import GeneralAttention
from vlattn.attention.multihead import MultiHeadAttention
from vlattn.attention.plugin import BUILTIN

# mechanisms whose defaults need a larger max length than the benchmark source
OPTIONS: dict[str, dict[str, Any]] = {"location": {"max_len": 256}, "tutorial": {"steps": 256}}


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_time(step: Callable[[], None], device: torch.device) -> float:
    """Seconds for one call of ``step`` (forward + backward)."""
    synchronise(device)
    start = time.perf_counter()
    step()
    synchronise(device)
    return time.perf_counter() - start


def median_ms(step: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    return 1000 * statistics.median(step_time(step, device) for _ in range(repeats))


def forward_backward(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Callable[[], None]:
    """A closure running ``module(*args)`` and back-propagating the context's sum."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        context = module(*args, **kwargs)[0]
        context.sum().backward()

    return step


def padding_mask(batch: int, length: int, device: torch.device) -> torch.Tensor:
    """Lengths spread from ``length`` down to about half of it."""
    lengths = torch.linspace(length, length // 2, batch, device=device).round().long()
    return torch.arange(length, device=device)[None, :] < lengths[:, None]


def bench_mechanisms(device: torch.device, quick: bool) -> None:
    from vlattn.registry import resolve

    batch, steps, source, dim = 32, 16, 64, 128
    gen = torch.Generator(device="cpu").manual_seed(0)
    query = torch.randn(batch, steps, dim, generator=gen).to(device).requires_grad_()
    keys = torch.randn(batch, source, dim, generator=gen).to(device).requires_grad_()
    mask = padding_mask(batch, source, device)
    for spec in BUILTIN:
        module = resolve(spec.factory)(dim, dim, **OPTIONS.get(spec.name, {})).to(device).train()
        step = forward_backward(module, query, keys, mask=mask)
        ms = median_ms(step, device, repeats=5 if quick else 20, warmup=2)
        emit(
            {
                "bench": "mechanism",
                "name": spec.name,
                "device": device.type,
                "B": batch,
                "Tq": steps,
                "S": source,
                "D": dim,
                "median_ms": round(ms, 3),
            }
        )


def multihead_workload(device: torch.device) -> dict[str, torch.Tensor]:
    """Inputs of the multi-head comparison: ``x``, ``grad_out`` ``[32, 128, 256]`` and the
    padding ``[32, 128]`` (True = pad; lengths uniform in 64..128, the first one full)."""
    batch, length, embed = 32, 128, 256
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, length, embed, generator=gen)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=gen)
    lengths[0] = length
    padding = torch.arange(length)[None, :] >= lengths[:, None]
    grad_out = torch.randn(batch, length, embed, generator=gen)
    return {"x": x.to(device), "padding": padding.to(device), "grad_out": grad_out.to(device)}


@dataclass
class MultiheadPair:
    """Ours and ``nn.MultiheadAttention`` with the same weights, each with its own input leaf."""

    ours: MultiHeadAttention
    theirs: torch.nn.MultiheadAttention
    x_ours: torch.Tensor
    x_theirs: torch.Tensor
    padding: torch.Tensor
    grad_out: torch.Tensor
    need_weights: bool

    def ours_step(self) -> None:
        """Reset the gradients, forward, ``out.backward(grad_out)``."""
        self.ours.zero_grad(set_to_none=True)
        self.x_ours.grad = None
        self.ours(self.x_ours, self.x_ours, mask=~self.padding)[0].backward(self.grad_out)

    def theirs_step(self) -> None:
        """The same for PyTorch's module."""
        self.theirs.zero_grad(set_to_none=True)
        self.x_theirs.grad = None
        x = self.x_theirs
        out = self.theirs(x, x, x, key_padding_mask=self.padding, need_weights=self.need_weights)[0]
        out.backward(self.grad_out)


def multihead_pair(device: torch.device, need_weights: bool) -> MultiheadPair:
    """The two modules (E=256, 8 heads, training mode, dropout 0) on :func:`multihead_workload`."""
    embed, heads = 256, 8
    torch.manual_seed(0)
    ours = MultiHeadAttention(embed, embed, num_heads=heads, need_weights=need_weights, dropout=0.0)
    theirs = torch.nn.MultiheadAttention(embed, heads, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    inputs = multihead_workload(device)
    x_ours, x_theirs = (inputs["x"].clone().requires_grad_() for _ in range(2))
    return MultiheadPair(
        ours.to(device).train(),
        theirs.to(device).train(),
        x_ours,
        x_theirs,
        inputs["padding"],
        inputs["grad_out"],
        need_weights,
    )


def interleaved_times(
    first: Callable[[], None], second: Callable[[], None], device: torch.device, reps: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Seconds per call of each, timed call by call in alternation (order swapped every pair,
    garbage collection paused)."""
    for _ in range(warmup):
        first()
        second()
    times: tuple[list[float], list[float]] = ([], [])
    gc.collect()
    gc.disable()
    try:
        for i in range(reps):
            order = [(first, times[0]), (second, times[1])]
            for step, out in order if i % 2 == 0 else order[::-1]:
                out.append(step_time(step, device))
    finally:
        gc.enable()
    return times


def bench_multihead_vs_torch(device: torch.device, quick: bool, threads: list[int]) -> None:
    before = torch.get_num_threads()
    try:
        for count in threads:
            torch.set_num_threads(count)
            for need_weights in (True, False):
                pair = multihead_pair(device, need_weights)
                reps = 10 if quick else 30
                ours, theirs = interleaved_times(pair.ours_step, pair.theirs_step, device, reps=reps, warmup=5)
                emit(
                    {
                        "bench": "multihead_vs_torch",
                        "device": device.type,
                        "threads": torch.get_num_threads(),
                        "need_weights": need_weights,
                        "B": 32,
                        "T": 128,
                        "E": 256,
                        "heads": 8,
                        "ours_ms": round(1000 * statistics.median(ours), 3),
                        "torch_ms": round(1000 * statistics.median(theirs), 3),
                        "speedup": round(statistics.median(t / o for t, o in zip(theirs, ours, strict=True)), 3),
                        "pairs": len(ours),
                    }
                )
    finally:
        torch.set_num_threads(before)


def saved_for_backward_mb(module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[float, torch.Tensor]:
    """Run ``module(*args, **kwargs)`` and measure what autograd saves for backward (MiB)."""
    storages: dict[tuple[int, str], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[(storage.data_ptr(), str(tensor.device))] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = module(*args, **kwargs)[0]
    return sum(storages.values()) / 2**20, out


def bench_length_scaling(device: torch.device, quick: bool) -> None:
    batch, dim, window = 2, 64, 10
    torch.manual_seed(0)
    mechanisms: dict[str, torch.nn.Module] = {
        "global-general": GeneralAttention(dim, dim),
        "local-p": LocalPredictiveAttention(dim, dim, window=window, need_weights=False),
        "local-p+weights": LocalPredictiveAttention(dim, dim, window=window),
    }
    for length in (128, 256, 512, 1024, 2048, 4096):
        x = torch.randn(batch, length, dim, device=device, requires_grad=True)
        mask = padding_mask(batch, length, device)
        repeats = 3 if quick and length >= 2048 else 5 if quick else 10
        for name, module in mechanisms.items():
            module.to(device).train()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            saved_mb, context = saved_for_backward_mb(module, x, x, mask=mask)
            context.sum().backward()
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            del context
            ms = median_ms(forward_backward(module, x, x, mask=mask), device, repeats, warmup=0)
            record = {
                "bench": "length_scaling",
                "name": name,
                "device": device.type,
                "B": batch,
                "S": length,
                "Tq": length,
                "D": dim,
                "window": window,
                "median_ms": round(ms, 3),
                "saved_mb": round(saved_mb, 2),
            }
            if peak is not None:
                record["peak_mb"] = round(peak, 2)
            emit(record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about a minute)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument(
        "--multihead-threads",
        type=int,
        nargs="+",
        default=[1, 2],
        metavar="N",
        help="CPU thread counts of the multi-head comparison (default 1 2)",
    )
    parser.add_argument(
        "--only",
        choices=["mechanisms", "multihead", "scaling"],
        action="append",
        help="run only these parts (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if min(args.multihead_threads) < 1:
        parser.error("--multihead-threads must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_attention: error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    parts = set(args.only or ["mechanisms", "multihead", "scaling"])
    emit(
        {
            "bench": "setup",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "devices": [d.type for d in devices],
            "quick": args.quick,
        }
    )
    for device in devices:
        if "multihead" in parts:
            bench_multihead_vs_torch(device, args.quick, args.multihead_threads)
        if "mechanisms" in parts:
            bench_mechanisms(device, args.quick)
        if "scaling" in parts:
            bench_length_scaling(device, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
