"""Soft against hard attention at equal data and budget on the synthetic scenes (CPU).

    python scripts/caption_compare.py --seeds 0 1 2 --train 4000 --epochs 6 --run-root runs/compare

For every attention mechanism and seed, one ``vlattn.train.fit("caption", ...)`` run with the same
scenes, epochs, batch size, schedule and architecture (the bundled models' recipe, without the
sharpening run), the checkpoint chosen on validation BLEU-4 (beam search on the validation
scenes, never the test scenes), then scored on held-out test scenes (beam 3). A run whose
``test.json`` exists is not trained again, so several invocations with disjoint ``--seeds`` can
share one ``--run-root``; the last prints every run and the mean and spread per mechanism.
``--hard-options`` adds caption task options for the hard runs only (``--options`` for all).

``--soft-warmup-epochs K`` trains each hard run as two runs within the same budget: ``K`` epochs
with soft attention (``<run>-warmup``), then ``--epochs`` minus ``K`` with hard attention from the
warm-up's best checkpoint (``init_from``: the two mechanisms share their parameters), at
``--hard-lr`` (default ``--lr``); the hard run's checkpoint is chosen on validation as any other.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from vlattn_caption.task import CaptionEvalOptions

from vlattn.checkpoint import load_model
from vlattn.train import fit
from vlattn.train.loop import RunResult

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_caption_synthetic import RECIPE as BUNDLED_RECIPE

# the bundled model's architecture (scripts/train_caption_synthetic.py), without its data sizes
RECIPE = {k: v for k, v in BUNDLED_RECIPE.items() if k not in ("synthetic_train", "synthetic_val")}
COLUMNS = ("bleu4", "cider_d", "grounding", "object_words_correct", "exact_match")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attention", nargs="+", default=["soft-spatial", "hard-spatial"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=4000, help="synthetic training scenes")
    parser.add_argument("--val", type=int, default=200, help="synthetic validation scenes (model selection)")
    parser.add_argument("--test", type=int, default=500, help="synthetic test scenes (scored once)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--options", default="{}", help="caption task options for every run (JSON)")
    parser.add_argument("--hard-options", default="{}", help="caption task options for hard-spatial runs (JSON)")
    parser.add_argument("--soft-warmup-epochs", type=int, default=0, help="hard runs: first epochs with soft attention")
    parser.add_argument("--hard-lr", type=float, default=None, help="hard runs after a soft warm-up (default --lr)")
    parser.add_argument("--run-root", type=Path, default=Path("runs/compare"))
    parser.add_argument("--label", default="", help="suffix of the hard runs' folder names (to keep variants apart)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not 0 <= args.soft_warmup_epochs < args.epochs:
        parser.error("--soft-warmup-epochs must be in [0, --epochs)")
    torch.set_num_threads(args.threads)

    results: dict[str, list[dict[str, float]]] = {}
    for attention in args.attention:
        for seed in args.seeds:
            name = attention + (f"-{args.label}" if args.label and attention == "hard-spatial" else "")
            run_dir = args.run_root / f"{name}-seed{seed}"
            scores = _scores(run_dir / "test.json") or _train_and_score(args, attention, seed, run_dir)
            results.setdefault(name, []).append(scores)
    print(f"train {args.train} scenes, {args.epochs} epochs, val {args.val}, test {args.test}, beam {args.beam_size}")
    print("| run | val BLEU-4 | " + " | ".join(COLUMNS) + " | minutes |")
    print("|---|---|" + "---|" * (len(COLUMNS) + 1))
    for name, runs in results.items():
        for seed, row in zip(args.seeds, runs, strict=True):
            cells = " | ".join(f"{row.get(c, float('nan')):.3f}" for c in COLUMNS)
            print(f"| {name} seed {seed} | {row['val_bleu4']:.3f} | {cells} | {row['minutes']:.1f} |")
    for name, runs in results.items():
        cells = []
        for column in COLUMNS:
            values = [r[column] for r in runs if column in r]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        print(f"| {name} mean ± sd | | " + " | ".join(cells) + " | |")


def _scores(path: Path) -> dict[str, float] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _train_and_score(args: argparse.Namespace, attention: str, seed: int, run_dir: Path) -> dict[str, float]:
    task_config = {
        **RECIPE,
        "attention": attention,
        "synthetic_train": args.train,
        "synthetic_val": args.val,
        **json.loads(args.options),
    }
    if attention == "hard-spatial":
        task_config.update(json.loads(args.hard_options))
    trainer = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "eval_batch_size": 100,
        "lr": args.lr,
        "schedule": "cosine",
        "warmup_steps": 50,
        "grad_clip": 5.0,
        "seed": seed,
        "threads": args.threads,
        "early_stop": "bleu4",
        "log_every": 20,
        "quiet": True,
        "tensorboard": False,
        "device": "cpu",
    }
    start = time.perf_counter()
    if attention == "hard-spatial" and args.soft_warmup_epochs:
        warmup = fit(
            "caption",
            {**task_config, "attention": "soft-spatial"},
            {**trainer, "epochs": args.soft_warmup_epochs},
            run_dir.with_name(run_dir.name + "-warmup"),
        )
        _check_finished(warmup)
        task_config["init_from"] = str(warmup.best_path)
        trainer.update(epochs=args.epochs - args.soft_warmup_epochs, lr=args.hard_lr or args.lr)
    result = fit("caption", task_config, trainer, run_dir)
    minutes = (time.perf_counter() - start) / 60
    best_path = _check_finished(result)
    loaded = load_model(best_path, expect_task="caption")
    task = loaded.task
    task.config.synthetic_test = args.test  # type: ignore[attr-defined]
    options = CaptionEvalOptions(split="test", beam_size=args.beam_size)
    loader = DataLoader(task.eval_data(None, options), batch_size=100, collate_fn=task.collate)
    with torch.no_grad():
        metrics = task.evaluate(loaded.model, loader, options)
    scores = {k: float(v) for k, v in metrics.items()}
    scores.update(val_bleu4=float(result.best_value), minutes=minutes)
    (run_dir / "test.json").write_text(json.dumps(scores, indent=1), encoding="utf-8")
    print(
        f"{run_dir}: val BLEU-4 {result.best_value:.3f}, test BLEU-4 {scores['bleu4']:.3f}, "
        f"grounding {scores.get('grounding', float('nan')):.3f}, {minutes:.1f} min",
        flush=True,
    )
    return scores


def _check_finished(result: RunResult) -> Path:
    """The best checkpoint of a run that trained all its epochs; an interrupted run is not scored
    (running the same command again trains it anew)."""
    if result.reason not in ("finished", "early_stop"):
        raise SystemExit(f"{result.run_dir}: {result.reason} at step {result.step}, not scored; run the command again")
    if result.best_path is None:
        raise SystemExit(f"no best model in {result.run_dir} ({result.reason})")
    return result.best_path


if __name__ == "__main__":
    main()
