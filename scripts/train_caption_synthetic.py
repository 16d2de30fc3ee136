"""Train the bundled Show-Attend-Tell captioner on synthetic scenes (CPU, one thread is enough).

    python scripts/train_caption_synthetic.py --attention soft-spatial \
        --out plugins/vlattn_caption/weights/synthetic-soft.safetensors

Drives the ``caption`` task's own methods (setup_data, build_model, training_step, evaluate) in a
plain loop: Adam, gradient clipping, validation BLEU-4 after every epoch (beam search on decoded
captions), the best epoch written as one .safetensors model file. Prints one line per epoch.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from vlattn_caption.task import CaptionConfig, CaptionTask

from vlattn.checkpoint import save_model
from vlattn.config import from_mapping, to_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attention", default="soft-spatial")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train", type=int, default=6000, help="synthetic training scenes")
    parser.add_argument("--val", type=int, default=200, help="synthetic validation scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--options", default="{}", help="extra caption task options as JSON")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    options = {
        "synthetic_train": args.train, "synthetic_val": args.val, "image_size": 48, "grid": 12,
        "cnn_channels": 64, "attention": args.attention, "train_captions": "first", "dropout": 0.2,
        "hidden_dim": 128, "embed_dim": 64, "eval_beam_size": 3, **json.loads(args.options),
    }
    config = from_mapping(CaptionConfig, options)
    task = CaptionTask(config)
    splits = task.setup_data()
    model = task.build_model()
    loader = DataLoader(splits.train, batch_size=args.batch_size, shuffle=True, collate_fn=task.collate,
                        generator=torch.Generator().manual_seed(args.seed))
    assert splits.val is not None
    val_loader = DataLoader(splits.val, batch_size=100, collate_fn=task.collate)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(loader))
    best = -1.0
    print(f"train {len(splits.train)} captions, val {len(splits.val)} images, vocab {len(task.vocab or [])}, "
          f"parameters {sum(p.numel() for p in model.parameters())}", flush=True)
    for epoch in range(1, args.epochs + 1):
        model.train()
        start, seen, logs_sum = time.perf_counter(), 0, {}
        for batch in loader:
            loss, logs = task.training_step(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            seen += batch["captions"].shape[0]
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) * batch["captions"].shape[0]
        train_time = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            metrics = task.evaluate(model, val_loader)
        shown = {k: round(v / seen, 4) for k, v in logs_sum.items()}
        print(f"epoch {epoch} {seen / train_time:.1f} captions/s train {shown} val "
              + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
        if metrics["bleu4"] > best:
            best = metrics["bleu4"]
            save_model(args.out, model, task_name="caption", config=to_dict(config), artifacts=task.artifacts(),
                       info={"epoch": epoch, "val": metrics, "train_captions_per_s": seen / train_time,
                             "script": "scripts/train_caption_synthetic.py"})
    print(f"best val bleu4 {best:.4f} -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
