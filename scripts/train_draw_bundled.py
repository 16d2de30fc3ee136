"""Train the DRAW model bundled with vlattn (CPU-sized) on binarized MNIST and report its test NLL.

    OMP_NUM_THREADS=1 nice -n 5 python scripts/train_draw_bundled.py \
        --out plugins/vlattn_draw/weights/draw_mnist.safetensors

Configuration: T = 16 steps, read 5x5, write 5x5, LSTM 160, z 20; Adam (lr 1e-3, cosine decay
to 1e-5 over ``--epochs``), batch 64, gradient norm clipped at 5; the model with the best
validation bound (10,000 ``X_valid`` images) is kept. At the end the script prints the test
bound on the 10,000 ``X_test`` images and the importance-weighted bound with ``--iw-samples``.
The loop drives the ``draw`` task's own ``training_step`` / ``evaluate``; it stands alone so that
it runs with one thread and a wall-clock budget (``--max-minutes``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from vlattn_draw.model import importance_weighted_nll
from vlattn_draw.task import DrawConfig, DrawTask

from vlattn.checkpoint import load_model, save_model
from vlattn.config import to_dict

BUNDLED = dict(steps=16, read_n=5, write_n=5, enc_size=160, dec_size=160, z_size=20)


def batches(images: torch.Tensor, size: int, generator: torch.Generator | None = None):
    """Yield ``[size, C, H, W]`` batches (shuffled when a generator is given)."""
    n = images.shape[0]
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, size):
        yield images[order[start : start + size]]


@torch.no_grad()
def bound(task: DrawTask, model: torch.nn.Module, images: torch.Tensor, batch: int = 500) -> dict[str, float]:
    """The task's evaluation metrics on ``images``."""
    model.eval()
    metrics = task.evaluate(model, batches(images, batch))
    model.train()
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("plugins/vlattn_draw/weights/draw_mnist.safetensors"))
    parser.add_argument("--data-path", default="", help="binarized_mnist.npz (default: ../shared/data)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--max-minutes", type=float, default=75.0, help="stop training after this long")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--iw-samples", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-only", action="store_true", help="only evaluate the model at --out")
    parser.add_argument("--log", type=Path, default=None, help="also append JSON lines here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = DrawConfig(data="binarized_mnist", data_path=args.data_path, **BUNDLED)
    task = DrawTask(config)
    splits = task.setup_data()
    train = splits.train.images  # type: ignore[attr-defined]
    valid = splits.val.images  # type: ignore[union-attr]
    model = task.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(train.shape[0] / args.batch_size)
    total = args.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total, eta_min=args.lr / 100)
    shuffle = torch.Generator().manual_seed(args.seed)
    start = time.time()
    best = math.inf
    images_seen = 0

    def log(row: dict) -> None:
        print(json.dumps(row), flush=True)
        if args.log:
            with args.log.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

    for epoch in range(1, 0 if args.eval_only else args.epochs + 1):
        sums = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0}
        count = 0
        for x in batches(train, args.batch_size, shuffle):
            loss, parts = task.training_step(model, x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            n = x.shape[0]
            sums["loss"] += float(loss.detach()) * n
            sums["reconstruction"] += float(parts["reconstruction"]) * n
            sums["kl"] += float(parts["kl"]) * n
            count += n
            images_seen += n
        val = bound(task, model, valid)
        elapsed = time.time() - start
        row = {"epoch": epoch, "minutes": round(elapsed / 60, 2), "images_per_s": round(images_seen / elapsed, 1)}
        row.update({f"train_{k}": round(v / count, 3) for k, v in sums.items()})
        row.update({"val_nll_bound": round(val["nll_bound"], 3), "val_kl": round(val["kl"], 3)})
        if val["nll_bound"] < best:
            best = val["nll_bound"]
            info = {"epoch": epoch, "val_nll_bound": val["nll_bound"], "recipe": "scripts/train_draw_bundled.py"}
            save_model(args.out, model, task_name="draw", config=to_dict(config), artifacts=task.artifacts(), info=info)
            row["saved"] = str(args.out)
        log(row)
        if elapsed > args.max_minutes * 60:
            log({"stopped": "time budget", "epoch": epoch})
            break

    loaded = load_model(args.out)
    test = task._load("test").images  # type: ignore[attr-defined]
    torch.manual_seed(args.seed + 1)
    result = bound(loaded.task, loaded.model, test)  # type: ignore[arg-type]
    with torch.no_grad():
        iw = torch.cat(
            [importance_weighted_nll(loaded.model, x, args.iw_samples, chunk=50) for x in batches(test, 100)]
        )
    summary = {
        "test_nll_bound": round(result["nll_bound"], 3), "test_reconstruction": round(result["reconstruction"], 3),
        "test_kl": round(result["kl"], 3), f"test_iw_nll_k{args.iw_samples}": round(float(iw.mean()), 3),
        "best_epoch": loaded.header.info.get("epoch"), "test_images": int(test.shape[0]),
    }
    log(summary)
    info = dict(loaded.header.info, **summary)
    save_model(args.out, loaded.model, task_name="draw", config=to_dict(config), artifacts=task.artifacts(), info=info)


if __name__ == "__main__":
    main()
