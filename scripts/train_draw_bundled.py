"""Train a DRAW model on binarized MNIST with the common trainer and report its test NLL.

The bundled model (CPU-sized, about an hour on one core)::

    OMP_NUM_THREADS=1 nice -n 5 python scripts/train_draw_bundled.py \
        --run-dir runs/draw-bundled --out plugins/vlattn_draw/weights/draw_mnist.safetensors

Bundled configuration: T = 16 steps, read 2x2, write 5x5 (the paper's attention sizes), LSTM 160,
z 20; Adam (lr 1e-3, cosine decay over ``--epochs``), batch 64, gradient norm clipped at 5.
``--paper`` switches to the paper's configuration (T = 64, read 2x2, write 5x5, LSTM 256, z 100,
batch 128; meant for a GPU: ``--device cuda``), ``--no-attention`` turns both attentions off
(full-image read, full-canvas write) for the without-attention comparison.

Training goes through ``vlattn.train.fit`` (the same trainer as ``vlattn train draw``): the
training rows of ``RUN_DIR/metrics.jsonl`` hold the loss split into ``reconstruction`` and
``kl`` (nats per image), the validation rows the bound on the 10,000 ``X_valid`` images;
``best.safetensors`` keeps the best validation bound and ``--patience`` stops early.
``--max-minutes`` is a wall-clock budget: the run is asked to stop (as by Ctrl-C) when it runs out,
and keeps its best model.

Finally the best model is copied to ``--out`` and scored on the 10,000 ``X_test`` images with the
code of ``vlattn eval`` (the variational bound, and the importance-weighted bound with
``--iw-samples K``); the results go into the model file's ``info`` and are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

import torch

BUNDLED = dict(steps=16, read_n=2, write_n=5, enc_size=160, dec_size=160, z_size=20)
PAPER = dict(steps=64, read_n=2, write_n=5, enc_size=256, dec_size=256, z_size=100)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("plugins/vlattn_draw/weights/draw_mnist.safetensors"),
        help="where the best model goes (with its test results)",
    )
    parser.add_argument("--run-dir", type=Path, default=Path("runs/draw-bundled"), help="trainer run folder (new)")
    parser.add_argument("--data-path", default="", help="binarized_mnist.npz (default: ../shared/data)")
    parser.add_argument("--paper", action="store_true", help="the paper's configuration (T=64, LSTM 256, z 100)")
    parser.add_argument("--no-attention", action="store_true", help="full-image read and full-canvas write")
    parser.add_argument("--steps", type=int, default=None, help="override T")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--max-minutes", type=float, default=0.0, help="wall-clock training budget (0 = none)")
    parser.add_argument(
        "--stop-after-epochs",
        type=int,
        default=0,
        help="stop after this many epochs (validations) without shortening the schedule "
        "(for short runs comparable with the first epochs of a full one; 0 = off)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 (128 with --paper)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=3, help="validations without improvement before stopping")
    parser.add_argument("--iw-samples", type=int, default=10, help="K of the importance-weighted test bound")
    parser.add_argument("--eval-batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-only", action="store_true", help="only score the model at --out")
    return parser.parse_args(argv)


def model_config(args: argparse.Namespace) -> dict:
    """The ``draw`` task options for the chosen configuration."""
    config = dict(PAPER if args.paper else BUNDLED)
    if args.steps is not None:
        config["steps"] = args.steps
    if args.no_attention:
        config.update(read_attention=False, write_attention=False)
    return dict(data="binarized_mnist", data_path=args.data_path, **config)


def _stop_after(run_dir: Path, validations: int, done: threading.Event) -> None:
    """Ask the trainer to stop (SIGTERM: finish the step, save) once ``metrics.jsonl`` holds
    ``validations`` validation rows (one per epoch)."""
    from vlattn.errors import VlattnError
    from vlattn.train.logging import read_metrics

    while not done.wait(2.0):
        try:
            rows = read_metrics(run_dir)
        except (OSError, VlattnError):
            continue
        if sum(row.get("split") == "val" for row in rows) >= validations:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def train(args: argparse.Namespace) -> Path:
    """Train through the common trainer; returns the run's best model file."""
    from vlattn.train import fit

    trainer = dict(
        epochs=args.epochs,
        batch_size=args.batch_size or (128 if args.paper else 64),
        eval_batch_size=args.eval_batch_size,
        lr=args.lr,
        optimizer="adam",
        schedule="cosine",
        grad_clip=5.0,
        patience=args.patience,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        log_every=100,
        quiet=True,
        tensorboard=False,
    )
    timer = None
    if args.max_minutes > 0:  # the trainer treats SIGTERM like Ctrl-C: finish the step, save, stop
        timer = threading.Timer(args.max_minutes * 60, os.kill, (os.getpid(), signal.SIGTERM))
        timer.daemon = True
        timer.start()
    done = threading.Event()
    if args.stop_after_epochs > 0:
        watcher = threading.Thread(target=_stop_after, args=(args.run_dir, args.stop_after_epochs, done), daemon=True)
        watcher.start()
    start = time.time()
    try:
        result = fit("draw", model_config(args), trainer, args.run_dir)
    finally:
        done.set()
        if timer is not None:
            timer.cancel()
    print(
        json.dumps(
            {
                "run_dir": str(result.run_dir),
                "steps": result.step,
                "reason": result.reason,
                "best_val_nll_bound": result.best_value,
                "minutes": round((time.time() - start) / 60, 1),
            }
        ),
        flush=True,
    )
    if result.best_path is None:
        raise SystemExit("training produced no best model")
    return result.best_path


def score(path: Path, out: Path, args: argparse.Namespace, extra_info: dict | None = None) -> dict:
    """Test bound and importance-weighted bound of the model file ``path`` (as ``vlattn eval``);
    writes the model with the results in its ``info`` to ``out`` (may be ``path``)."""
    from vlattn_draw.task import DrawEvalOptions

    from vlattn.checkpoint import load_model, save_model
    from vlattn.train.evaluation import evaluate_file

    torch.manual_seed(args.seed + 1)
    start = time.time()
    bound = evaluate_file(path, device=args.device, batch_size=args.eval_batch_size)
    options = DrawEvalOptions(iw_samples=args.iw_samples, iw_chunk=args.iw_samples)
    iw = (
        evaluate_file(path, device=args.device, batch_size=args.eval_batch_size, options=options)
        if args.iw_samples > 0
        else {}
    )
    summary = {
        "test_images": int(bound["images"]),
        "test_nll_bound": round(bound["nll_bound"], 3),
        "test_reconstruction": round(bound["reconstruction"], 3),
        "test_kl": round(bound["kl"], 3),
    }
    if iw:
        summary[f"test_iw_nll_k{args.iw_samples}"] = round(iw["iw_nll"], 3)
    summary["eval_minutes"] = round((time.time() - start) / 60, 1)
    loaded = load_model(path)
    info = {**loaded.header.info, **(extra_info or {}), **summary}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(
        out, loaded.model, task_name="draw", config=loaded.header.config, artifacts=loaded.task.artifacts(), info=info
    )
    return info


def main(argv: list[str] | None = None) -> None:
    """Train (unless ``--eval-only``), copy the best model to ``--out`` and score it."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    best = args.out if args.eval_only else train(args)
    recipe = (
        "scripts/train_draw_bundled.py"
        + (" --paper" if args.paper else "")
        + (" --no-attention" if args.no_attention else "")
    )
    info = score(best, args.out, args, {"recipe": recipe})
    print(json.dumps(info), flush=True)


if __name__ == "__main__":
    main()
