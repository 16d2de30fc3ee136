"""Train a bundled Show-Attend-Tell captioner on synthetic scenes with the common trainer (CPU).

    WIDE='"scene_objects": "1-5", "scene_sizes": "0.12-0.38", "scene_background": "15-230",
          "scene_noise": 16, "max_caption_len": 34, "eval_max_len": 34, "hidden_dim": 192, "embed_dim": 96'
    python scripts/train_caption_synthetic.py --attention soft-spatial --train 24000 --val 300 \
        --epochs 8 --sharpen-epochs 0 --options "{$WIDE}" \
        --out plugins/vlattn_caption/weights/synthetic-soft.safetensors
    python scripts/train_caption_synthetic.py --attention hard-spatial --train 24000 --val 300 \
        --init-from plugins/vlattn_caption/weights/synthetic-soft.safetensors --sharpen-epochs 2 \
        --sharpen-lr 3e-4 --options "{$WIDE, \"context_dropout\": 0.1, \"attention_entropy\": 0.1}" \
        --run-dir runs/hard-1 --out runs/hard-1.safetensors
    python scripts/train_caption_synthetic.py --attention hard-spatial --train 24000 --val 300 \
        --init-from runs/hard-1.safetensors --sharpen-epochs 3 --sharpen-lr 3e-4 \
        --options "{$WIDE, \"context_dropout\": 0.0, \"attention_entropy\": 0.1}" \
        --out plugins/vlattn_caption/weights/synthetic-hard.safetensors

(the bundled models are trained on the wide scene distribution; the hard-attention model starts
from the soft one's weights, which its mechanism shares, and trains five epochs with sampled
glimpses, REINFORCE and the attention-entropy term; from scratch, drop ``--init-from``)

Two runs of ``vlattn.train.fit("caption", ...)`` under ``--run-dir`` (default
``runs/caption-synthetic-<attention>``), each with Adam, a cosine schedule, gradient clipping and
validation on decoded captions (beam search, never teacher forcing) after every epoch, the best
checkpoint and early stopping on ``--early-stop`` (BLEU-4 by default):

1. ``language/``: ``--epochs`` epochs of the plain recipe (no doubly stochastic term);
2. ``sharpen/``: ``--sharpen-epochs`` more from the first run's best model (``init_from``) with
   context dropout and the attention-entropy term, which teach each word to look at what it
   names (``--sharpen-epochs 0`` skips it).

The last run's ``best.safetensors`` is copied to ``--out``. The same runs from the command line::

    vlattn train caption --attention soft-spatial --image-size 48 --grid 12 --cnn-channels 64 \
        --embed-dim 64 --hidden-dim 128 --dropout 0.2 --train-captions first --doubly-stochastic 0 \
        --synthetic-train 8000 --synthetic-val 200 --eval-beam-size 3 --epochs 9 --batch-size 64 \
        --lr 2e-3 --schedule cosine --warmup-steps 50 --grad-clip 5 --out runs/scenes/language
    vlattn train caption ...the same options... --init-from runs/scenes/language/best.safetensors \
        --context-dropout 0.75 --attention-entropy 0.1 --epochs 8 --lr 1e-3 --out runs/scenes/sharpen
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from vlattn.fileio import atomic_write
from vlattn.train import fit
from vlattn.train.logging import read_metrics
from vlattn.train.loop import RunResult

#: The bundled model's architecture and data (the model file stores them; change with --options).
RECIPE = {
    "synthetic_train": 8000,
    "synthetic_val": 200,
    "image_size": 48,
    "grid": 12,
    "cnn_channels": 64,
    "coordinates": True,
    "embed_dim": 64,
    "hidden_dim": 128,
    "dropout": 0.2,
    "train_captions": "first",
    "eval_beam_size": 3,
    "doubly_stochastic": 0.0,
}
#: What the second run adds.
SHARPEN = {"context_dropout": 0.75, "attention_entropy": 0.1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attention", default="soft-spatial")
    parser.add_argument("--out", type=Path, required=True, help="where to copy the run's best model file")
    parser.add_argument("--run-dir", type=Path, default=None, help="run folder (default runs/caption-synthetic-ATT)")
    parser.add_argument("--epochs", type=int, default=9, help="epochs of the first run")
    parser.add_argument("--sharpen-epochs", type=int, default=8, help="epochs of the second run (0 = none)")
    parser.add_argument("--sharpen-lr", type=float, default=1e-3)
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="skip the first run: sharpen this model file (e.g. to train a model further)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--schedule", default="cosine", choices=["constant", "cosine", "linear"])
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--early-stop", default="bleu4", help="validation metric for the best model (bleu4, cider_d)")
    parser.add_argument("--patience", type=int, default=0, help="stop after N epochs without improvement (0 = never)")
    parser.add_argument("--train", type=int, default=RECIPE["synthetic_train"], help="synthetic training scenes")
    parser.add_argument("--val", type=int, default=RECIPE["synthetic_val"], help="synthetic validation scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--options", default="{}", help="extra caption task options as JSON")
    args = parser.parse_args()

    if args.init_from is not None and args.sharpen_epochs == 0:
        raise SystemExit("--init-from needs --sharpen-epochs > 0")
    torch.set_num_threads(args.threads)
    task_config = {
        **RECIPE,
        "attention": args.attention,
        "synthetic_train": args.train,
        "synthetic_val": args.val,
        **json.loads(args.options),
    }
    trainer_config = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "eval_batch_size": 100,
        "lr": args.lr,
        "schedule": args.schedule,
        "warmup_steps": args.warmup_steps,
        "grad_clip": 5.0,
        "seed": args.seed,
        "threads": args.threads,
        "early_stop": args.early_stop,
        "patience": args.patience,
        "log_every": 20,
        "quiet": True,
        "tensorboard": False,
        "device": "cpu",
    }
    root = args.run_dir or Path("runs") / f"caption-synthetic-{args.attention}"
    start_from = args.init_from
    if start_from is None:
        result = _run(task_config, trainer_config, root / "language")
        start_from = result.best_path
    if args.sharpen_epochs > 0:
        sharpen = {**task_config, **SHARPEN, "init_from": str(start_from), **json.loads(args.options)}
        result = _run(
            sharpen, {**trainer_config, "epochs": args.sharpen_epochs, "lr": args.sharpen_lr}, root / "sharpen"
        )
    best = result.best_path
    assert best is not None
    atomic_write(args.out, lambda tmp: shutil.copyfile(best, tmp))
    print(f"best val {result.best_metric} {result.best_value:.4f}: {best} -> {args.out}", flush=True)


def _run(task_config: dict, trainer_config: dict, run_dir: Path) -> RunResult:
    """One ``fit`` run; prints its validation rows."""
    start = time.perf_counter()
    result = fit("caption", task_config, trainer_config, run_dir)
    for row in read_metrics(run_dir):
        if row.get("split") == "val":
            shown = " ".join(f"{k}={row[k]:.4f}" for k in ("loss", "bleu4", "cider_d", "grounding") if k in row)
            print(f"{run_dir.name} epoch {row.get('epoch')} step {row.get('step')} val {shown}")
    minutes = (time.perf_counter() - start) / 60
    print(f"{run_dir}: {result.reason} after {result.step} steps in {minutes:.1f} min", flush=True)
    if result.best_path is None:
        raise SystemExit(f"no best model in {run_dir} ({result.reason})")
    return result


if __name__ == "__main__":
    main()
