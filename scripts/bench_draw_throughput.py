"""Training throughput of DRAW on CPU (images/s), side by side with other implementations.

    OMP_NUM_THREADS=1 python scripts/bench_draw_throughput.py --threads 1
    OMP_NUM_THREADS=2 python scripts/bench_draw_throughput.py --threads 2
    OMP_NUM_THREADS=1 python scripts/bench_draw_throughput.py --threads 1 --workload default \
        --batch-size 64 --anchor-repo PATH   # PATH: a checkout of kamenbliznashki/generative_models

``vlattn`` is the model as it trains (its own backward, :mod:`vlattn_draw.fused`, with its native
kernels where a C compiler is available: the script says whether they are on);
``--without-native`` adds the own backward with its PyTorch code instead (``vlattn-pytorch``) and
``--with-autograd`` the same model differentiated by autograd (``vlattn-autograd``).

One training step = forward + loss + backward + gradient clipping (norm 10) + Adam update on a
batch of binary 28x28 images, at the paper's configuration by default (T = 64, read 2x2, write
5x5, LSTM 256, z 100, batch 128). ``--workload`` picks one of the public ``draw.py``'s settings
instead: ``default`` (its argparse defaults: T = 32, no attention, i.e. the whole image is read
and the whole canvas written), ``readme`` (T = 32, read 2x2, write 5x5) or ``paper`` (T = 64,
read 2x2, write 5x5). The implementations' steps alternate, in the opposite order every other
round, so all see the same machine load; the script prints the median images/s of each and, per
implementation, the median over rounds of its step time divided by vlattn's (> 1: vlattn faster).

``reference`` is :class:`ReferenceDraw` below: the same model written the way the public PyTorch
implementations write it (``nn.LSTMCell`` encoder and decoder, one ``nn.Linear`` per head,
filterbanks normalised by their sum, ``x`` and ``x_hat`` read separately, per-step ``mu`` /
``sigma`` collected in lists, ``BCELoss`` on ``sigmoid(c_T)``). It is the same model with the
same matrix sizes (:func:`copy_weights` gives it vlattn's weights and the same loss, which the
tests check); only the code organisation differs.

``--anchor-repo`` adds ``anchor``: the ``draw.py`` of kamenbliznashki/generative_models (PyTorch,
MIT licence) from a checkout the user fetched, driven as its own training loop drives it (its
``DRAW`` built from its own argparse parser with the workload's flags, its ``loss_fn``,
Adam(lr, betas 0.5 / 0.999)). This script never ships its code; its training-only helpers
(``utils``, and ``tqdm`` where it is not installed) are replaced by placeholders while it loads.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from vlattn_draw.kernels import load as load_draw_kernels
from vlattn_draw.model import Draw, DrawShape

Step = Callable[[torch.Tensor], None]


class ReferenceDraw(nn.Module):
    """DRAW in the style of the public PyTorch implementations (with the paper's grid and KL)."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.T, self.A, self.B = args.steps, 28, 28
        self.read_n, self.write_n, self.z_size = args.read_n, args.write_n, args.z
        self.enc_size = self.dec_size = args.lstm
        self.attention = not args.no_attention
        read_size = 2 * self.read_n**2 if self.attention else 2 * self.A * self.B
        write_size = self.write_n**2 if self.attention else self.A * self.B
        self.encoder = nn.LSTMCell(read_size + self.dec_size, self.enc_size)
        self.mu_linear = nn.Linear(self.enc_size, self.z_size)
        self.sigma_linear = nn.Linear(self.enc_size, self.z_size)
        self.decoder = nn.LSTMCell(self.z_size, self.dec_size)
        self.write_linear = nn.Linear(self.dec_size, write_size)
        self.read_attn_linear = nn.Linear(self.dec_size, 5)
        self.write_attn_linear = nn.Linear(self.dec_size, 5)

    def attn_window(self, h_dec: torch.Tensor, linear: nn.Linear, n: int):
        params = linear(h_dec)
        gx_, gy_, log_sigma2, log_delta, log_gamma = params.split(1, dim=1)
        gx = (self.A + 1) / 2 * (gx_ + 1)
        gy = (self.B + 1) / 2 * (gy_ + 1)
        delta = (max(self.A, self.B) - 1) / (n - 1) * torch.exp(log_delta)
        sigma2 = torch.exp(log_sigma2)
        return (*self.filterbank(gx, gy, sigma2, delta, n), torch.exp(log_gamma))

    def filterbank(self, gx, gy, sigma2, delta, n, eps: float = 1e-8):
        grid_i = torch.arange(1, n + 1, dtype=torch.float32).view(1, -1)
        mu_x = gx + (grid_i - n / 2 - 0.5) * delta  # [B, N]
        mu_y = gy + (grid_i - n / 2 - 0.5) * delta
        a = torch.arange(1, self.A + 1, dtype=torch.float32).view(1, 1, -1)
        b = torch.arange(1, self.B + 1, dtype=torch.float32).view(1, 1, -1)
        mu_x = mu_x.unsqueeze(2)
        mu_y = mu_y.unsqueeze(2)
        sigma2 = sigma2.view(-1, 1, 1)
        fx = torch.exp(-torch.square(a - mu_x) / (2 * sigma2))
        fy = torch.exp(-torch.square(b - mu_y) / (2 * sigma2))
        fx = fx / (fx.sum(2, keepdim=True) + eps)
        fy = fy / (fy.sum(2, keepdim=True) + eps)
        return fx, fy

    def read(self, x, x_hat, h_dec):
        if not self.attention:
            return torch.cat([x, x_hat], dim=1)
        fx, fy, gamma = self.attn_window(h_dec, self.read_attn_linear, self.read_n)

        def filter_img(img):
            img = img.view(-1, self.B, self.A)
            glimpse = fy.bmm(img.bmm(fx.transpose(1, 2)))
            return glimpse.view(-1, self.read_n**2) * gamma

        return torch.cat([filter_img(x), filter_img(x_hat)], dim=1)

    def write(self, h_dec):
        w = self.write_linear(h_dec)
        if not self.attention:
            return w
        fx, fy, gamma = self.attn_window(h_dec, self.write_attn_linear, self.write_n)
        w = w.view(-1, self.write_n, self.write_n)
        image = fy.transpose(1, 2).bmm(w.bmm(fx))
        return image.view(-1, self.A * self.B) / gamma

    def forward(self, x: torch.Tensor):
        batch = x.shape[0]
        c = torch.zeros(batch, self.A * self.B)
        h_enc = torch.zeros(batch, self.enc_size)
        c_enc = torch.zeros(batch, self.enc_size)
        h_dec = torch.zeros(batch, self.dec_size)
        c_dec = torch.zeros(batch, self.dec_size)
        mus, log_sigmas = [], []
        for _ in range(self.T):
            x_hat = x - torch.sigmoid(c)
            r = self.read(x, x_hat, h_dec)
            h_enc, c_enc = self.encoder(torch.cat([r, h_dec], dim=1), (h_enc, c_enc))
            mu = self.mu_linear(h_enc)
            log_sigma = self.sigma_linear(h_enc)
            z = mu + torch.exp(log_sigma) * torch.randn_like(mu)
            h_dec, c_dec = self.decoder(z, (h_dec, c_dec))
            c = c + self.write(h_dec)
            mus.append(mu)
            log_sigmas.append(log_sigma)
        return torch.sigmoid(c), mus, log_sigmas

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        x_recon, mus, log_sigmas = self(x)
        reconstruction = F.binary_cross_entropy(x_recon, x, reduction="sum") / x.shape[0]
        kl = 0.0
        for mu, log_sigma in zip(mus, log_sigmas, strict=True):
            kl = kl + 0.5 * torch.sum(mu**2 + torch.exp(2 * log_sigma) - 2 * log_sigma - 1) / x.shape[0]
        return reconstruction + kl


def _lstm_rows(weight: torch.Tensor) -> torch.Tensor:
    """vlattn's gate order (i, f, o, g) -> ``nn.LSTMCell``'s (i, f, g, o), along the first axis."""
    i, f, o, g = weight.chunk(4, dim=0)
    return torch.cat([i, f, g, o], dim=0)


@torch.no_grad()
def copy_weights(reference: ReferenceDraw, model: Draw) -> None:
    """Load an attention-on vlattn model (zero initial states and canvas) into ``reference``."""
    if not (model.shape.read_attention and model.shape.write_attention):
        raise ValueError("copy_weights needs read and write attention on")
    write, write_win, read_win, enc_gates, dec_gates = model.dec_out.weight.split(model.dec_sizes)
    b_write, b_write_win, b_read_win, b_enc_gates, b_dec_gates = model.dec_out.bias.split(model.dec_sizes)
    mu, log_sigma, enc_hidden = model.enc_out.weight.split(model.enc_sizes)
    b_mu, b_log_sigma, b_enc_hidden = model.enc_out.bias.split(model.enc_sizes)
    ref = reference
    ref.encoder.weight_ih.copy_(_lstm_rows(torch.cat([model.enc_in.weight, enc_gates], dim=1)))
    ref.encoder.bias_ih.copy_(_lstm_rows(b_enc_gates))
    ref.encoder.weight_hh.copy_(_lstm_rows(enc_hidden))
    ref.encoder.bias_hh.copy_(_lstm_rows(b_enc_hidden))
    ref.decoder.weight_ih.copy_(_lstm_rows(model.dec_in.weight))
    ref.decoder.bias_ih.zero_()
    ref.decoder.weight_hh.copy_(_lstm_rows(dec_gates))
    ref.decoder.bias_hh.copy_(_lstm_rows(b_dec_gates))
    for linear, weight, bias in (
        (ref.mu_linear, mu, b_mu),
        (ref.sigma_linear, log_sigma, b_log_sigma),
        (ref.write_linear, write, b_write),
        (ref.read_attn_linear, read_win, b_read_win),
        (ref.write_attn_linear, write_win, b_write_win),
    ):
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)


def public_style_step(args: argparse.Namespace) -> Step:
    """One training step of :class:`ReferenceDraw`."""
    model = ReferenceDraw(args)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x: torch.Tensor) -> None:
        loss = model.loss(x.view(x.shape[0], -1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()

    return step


def vlattn_step(args: argparse.Namespace, *, fused: bool = True, native: bool = True) -> Step:
    """One training step of vlattn's DRAW (``fused=False``: through autograd instead of the
    model's own backward; ``native=False``: the own backward without its native kernels)."""
    model = Draw(
        DrawShape(
            steps=args.steps,
            read_n=args.read_n,
            write_n=args.write_n,
            enc_size=args.lstm,
            dec_size=args.lstm,
            z_size=args.z,
            read_attention=not args.no_attention,
            write_attention=not args.no_attention,
        )
    )
    model.fused_backward = fused
    model.native_kernels = native
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))

    def step(x: torch.Tensor) -> None:
        out = model(x)
        loss = (out.reconstruction + out.kl).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        loss.item()

    return step


# The public draw.py's settings: its command-line flags, and the same sizes as this script's options.
WORKLOADS: dict[str, tuple[list[str], dict[str, object]]] = {
    "default": ([], {"steps": 32, "no_attention": True}),
    "readme": (
        ["--use_read_attn", "--read_size", "2", "--use_write_attn", "--write_size", "5"],
        {"steps": 32, "read_n": 2, "write_n": 5, "no_attention": False},
    ),
    "paper": (
        ["--time_steps", "64", "--use_read_attn", "--read_size", "2", "--use_write_attn", "--write_size", "5"],
        {"steps": 64, "read_n": 2, "write_n": 5, "no_attention": False},
    ),
}


def load_anchor(repo: Path) -> types.ModuleType:
    """The ``draw.py`` module of a kamenbliznashki/generative_models checkout at ``repo``."""
    path = repo / "draw.py"
    if not path.is_file():
        raise SystemExit(
            f"vlattn: error: no draw.py in {repo} (--anchor-repo takes a checkout of kamenbliznashki/generative_models)"
        )
    placeholders = {"utils": types.ModuleType("utils")}  # its tensorboard helpers: unused here
    if importlib.util.find_spec("tqdm") is None:
        placeholders["tqdm"] = types.ModuleType("tqdm")
        placeholders["tqdm"].tqdm = lambda iterable=None, *args, **kwargs: iterable  # type: ignore[attr-defined]
    before = {name: sys.modules.get(name) for name in placeholders}
    sys.modules.update(placeholders)
    try:
        spec = importlib.util.spec_from_file_location("anchor_draw", path)
        if spec is None or spec.loader is None:
            raise SystemExit(f"vlattn: error: cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # `x is 'literal'` comparisons in its data loader
            spec.loader.exec_module(module)
    except ImportError as error:
        raise SystemExit(f"vlattn: error: cannot import {path}: {error}") from None
    finally:
        for name, previous in before.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module


def anchor_step(module: types.ModuleType, flags: list[str], args: argparse.Namespace) -> Step:
    """One training step of the anchor's ``DRAW`` with its own parser's settings for ``flags``
    (which must be the sizes vlattn runs with)."""
    options = module.parser.parse_args(flags)
    options.device = torch.device("cpu")
    attention = options.use_read_attn and options.use_write_attn
    resolved = (options.time_steps, options.lstm_size, options.z_size, not attention)
    if resolved != (args.steps, args.lstm, args.z, args.no_attention) or (
        attention and (options.read_size, options.write_size) != (args.read_n, args.write_n)
    ):
        raise SystemExit("vlattn: error: the anchor's draw.py resolves the workload to other sizes than vlattn's")
    torch.manual_seed(5)
    model = module.DRAW(options)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr, betas=(0.5, 0.999))

    def step(x: torch.Tensor) -> None:
        flat = x.view(x.shape[0], -1)
        model.train()
        d, q = model(flat)
        loss = module.loss_fn(d, q, flat, None, None)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        loss.item()

    return step


def time_interleaved(steps: dict[str, Step], x: torch.Tensor, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each implementation's steps, ``repeats`` rounds of one step each, the order
    reversed every other round."""
    for _ in range(warmup):
        for step in steps.values():
            step(x)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(repeats):
        names = list(steps) if round_index % 2 == 0 else list(reversed(steps))
        for name in names:
            start = time.perf_counter()
            steps[name](x)
            times[name].append(time.perf_counter() - start)
    return times


def report(times: dict[str, list[float]], batch: int) -> None:
    """Median images/s of each implementation, and each one's step time over vlattn's per round."""
    for name, values in times.items():
        rate = batch / statistics.median(values)
        print(f"{name:16s} {rate:8.1f} images/s  (median of {len(values)} steps)")
    for name, values in times.items():
        if name == "vlattn":
            continue
        ratios = [theirs / ours for theirs, ours in zip(values, times["vlattn"], strict=True)]
        print(
            f"ratio vlattn / {name}: {statistics.median(ratios):.2f}x  "
            f"(median over {len(ratios)} rounds, {min(ratios):.2f}-{max(ratios):.2f})"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64, help="T")
    parser.add_argument("--read-n", type=int, default=2)
    parser.add_argument("--write-n", type=int, default=5)
    parser.add_argument("--lstm", type=int, default=256)
    parser.add_argument("--z", type=int, default=100)
    parser.add_argument("--no-attention", action="store_true")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), help="a setting of the public draw.py (see above)")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per implementation first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--with-autograd", action="store_true", help="also time vlattn's model through autograd (fused_backward off)"
    )
    parser.add_argument(
        "--without-native",
        action="store_true",
        help="also time vlattn's own backward with its PyTorch code instead of the native kernels",
    )
    parser.add_argument(
        "--anchor-repo",
        type=Path,
        default=None,
        help="a checkout of kamenbliznashki/generative_models: also time its draw.py (see above)",
    )
    args = parser.parse_args(argv)
    if args.workload is not None:
        for name, value in WORKLOADS[args.workload][1].items():
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((args.batch_size, 1, 28, 28), 0.13))  # MNIST's ink density
    steps = {"vlattn": vlattn_step(args), "reference": public_style_step(args)}
    if args.without_native:
        steps["vlattn-pytorch"] = vlattn_step(args, native=False)
    if args.with_autograd:
        steps["vlattn-autograd"] = vlattn_step(args, fused=False)
    if args.anchor_repo is not None:
        flags = WORKLOADS[args.workload or "paper"][0]  # anchor_step checks that the sizes agree
        steps["anchor"] = anchor_step(load_anchor(args.anchor_repo), flags, args)
    times = time_interleaved(steps, x, args.repeats, args.warmup)
    windows = f"read {args.read_n}x{args.read_n} write {args.write_n}x{args.write_n}"
    windows = "no attention" if args.no_attention else windows
    print(
        f"T={args.steps} {windows} LSTM {args.lstm} z {args.z} batch {args.batch_size} threads {args.threads}"
        + (f" (workload {args.workload})" if args.workload else "")
    )
    print(f"native kernels: {'on' if load_draw_kernels() is not None else 'unavailable (PyTorch code)'}")
    report(times, args.batch_size)


if __name__ == "__main__":
    main()
