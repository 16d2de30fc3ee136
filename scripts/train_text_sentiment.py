"""Train the bundled sentiment model of ``vlattn classify`` on all of UCI Amazon + Yelp.

    python scripts/train_text_sentiment.py --data ../shared/data/sentiment

Trains the "ours-ensemble3" recipe of ``scripts/text_results.py`` (three BiGRU + attention
classifiers side by side) through ``vlattn.train.fit`` on every
sentence (no validation split: the recipe's accuracy is measured by that script's 10-fold
cross-validation), then stores the weights in float16 (half the size; they load back into a
float32 model) at ``plugins/vlattn_text/weights/sentiment.safetensors``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from text_results import RECIPES

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "plugins" / "vlattn_text" / "weights" / "sentiment.safetensors"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/sentiment", help="folder or comma-separated UCI files")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--recipe", default="ours-ensemble3", choices=sorted(RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs (0 = keep)")
    args = parser.parse_args(argv)

    import torch

    from vlattn.checkpoint import load_model, read_header, save_model
    from vlattn.train import fit

    torch.set_num_threads(args.threads)
    recipe = RECIPES[args.recipe]
    task_config = {"data": [p for p in args.data.split(",") if p], **recipe["task"], "val_split": 0.0}
    trainer = {"seed": args.seed, "quiet": True, "tensorboard": False, "threads": args.threads, **recipe["trainer"]}
    if args.epochs:
        trainer["epochs"] = args.epochs
    with tempfile.TemporaryDirectory(prefix="vlattn-sentiment-") as work:
        start = time.perf_counter()
        result = fit("text-classifier", task_config, trainer, Path(work) / "run")
        seconds = time.perf_counter() - start
        loaded = load_model(result.last_path)
        header = read_header(result.last_path)
        model = loaded.model.half()
        info = {
            **header.info,
            "recipe": args.recipe,
            "trainer": trainer,
            "train_seconds": round(seconds, 1),
            "stored_dtype": "float16",
        }
        out = save_model(
            args.out, model, task_name=header.task, config=header.config, artifacts=header.artifacts, info=info
        )
    print(f"trained {trainer['epochs']} epochs in {seconds:.0f} s; wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
