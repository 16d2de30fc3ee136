"""CPU speed of the captioner: training captions/s, batched beam search vs a per-image loop, CLI latency.

    python scripts/caption_speed.py [--model FILE] [--images 100] [--repeats 3] [--threads 1]

All figures are medians over ``--repeats`` runs, measured in this one process with the same
model and thread count:

* training: captions per second of ``CaptionTask.training_step`` + backward + Adam step,
  batch 32, on synthetic scenes;
* decoding: images per second of beam search (beam 5) over ``--images`` test scenes, batched
  across images and beams, against the same search run image by image (the per-image loop of
  the usual public implementations), and the ratio; the two must produce the same captions;
* ``vlattn caption IMAGE``: wall-clock latency of the whole command for one image in a fresh
  process (Python start, imports, model load, decode), and the in-process latency once loaded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from vlattn_caption.predict import BUNDLED_MODEL, Captioner
from vlattn_caption.records import synthetic_records
from vlattn_caption.search import beam_search, per_image_beam_search

from vlattn.checkpoint import load_model
from vlattn.data.images import image_tensor


def timed(fn, repeats: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"model {args.model.name}, torch {torch.__version__}, threads {args.threads}, repeats {args.repeats}")

    loaded = load_model(args.model, expect_task="caption")
    task, model = loaded.task, loaded.model
    size = task.image_size  # type: ignore[attr-defined]

    # training throughput (a fresh copy of the architecture, batch 32)
    task.config.synthetic_train, task.config.synthetic_val = 32 * args.train_steps, 1  # type: ignore[attr-defined]
    splits = task.setup_data()
    trainee = task.build_model().train()
    optimizer = torch.optim.Adam(trainee.parameters(), lr=1e-3)
    batches = list(DataLoader(splits.train, batch_size=32, collate_fn=task.collate))

    def train_pass() -> int:
        seen = 0
        for batch in batches:
            loss, _ = task.training_step(trainee, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += batch["captions"].shape[0]
        return seen

    train_pass()  # warm-up
    seconds, seen = timed(train_pass, args.repeats)
    print(f"training: {seen / seconds:.1f} captions/s (batch 32, {len(batches)} steps per run)")

    # batched beam search vs per-image loop
    records = synthetic_records("test", args.images, seed=0, image_size=size)
    images = torch.stack([image_tensor(r.load(), size) for r in records])
    model.eval()
    beam_search(model, images[:4], beam_size=args.beam_size)  # warm-up
    batched_s, batched = timed(lambda: beam_search(model, images, beam_size=args.beam_size), args.repeats)
    looped_s, looped = timed(lambda: per_image_beam_search(model, images, beam_size=args.beam_size), args.repeats)
    same = batched.tokens == looped.tokens  # type: ignore[union-attr]
    print(
        f"beam search (beam {args.beam_size}, {args.images} images): batched {args.images / batched_s:.1f} images/s, "
        f"per-image loop {args.images / looped_s:.1f} images/s, speed-up {looped_s / batched_s:.1f}x, "
        f"identical captions: {same}"
    )

    # CLI latency for one image
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.png"
        records[0].load().save(path)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        command = [sys.executable, "-m", "vlattn", "caption", str(path), "--model", str(args.model)]
        subprocess.run(command, check=True, capture_output=True, env=env)  # warm the file cache
        cli_s, proc = timed(
            lambda: subprocess.run(command, check=True, capture_output=True, text=True, env=env), args.repeats
        )
        captioner = Captioner.load(args.model)
        captioner.caption_files([str(path)], beam_size=args.beam_size)
        warm_s, _ = timed(lambda: captioner.caption_files([str(path)], beam_size=args.beam_size), args.repeats)
    print(
        f"vlattn caption, one image: {cli_s * 1000:.0f} ms end to end (fresh process), "
        f"{warm_s * 1000:.1f} ms once the model is loaded; caption: {proc.stdout.strip()!r}"
    )  # type: ignore[union-attr]


if __name__ == "__main__":
    main()
