"""Scores of caption models on held-out synthetic scenes: BLEU-1..4, ROUGE-L, CIDEr-D, METEOR, grounding.

    python scripts/caption_results.py                       # the bundled soft and hard models
    python scripts/caption_results.py --model run/best.safetensors --beam-size 3

Decodes every test scene with batched beam search (never teacher forcing), scores the corpus
with the pycocoevalcap scorers against the two template captions of each scene, and measures
grounding: the share of correctly named object nouns whose attention peak lies inside that
object's box. Prints one markdown table row per model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from vlattn_caption.predict import WEIGHTS_DIR
from vlattn_caption.task import CaptionEvalOptions

from vlattn.checkpoint import load_model

COLUMNS = [
    "bleu1",
    "bleu2",
    "bleu3",
    "bleu4",
    "rouge_l",
    "cider_d",
    "meteor",
    "grounding",
    "object_words_correct",
    "exact_match",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", help="model file (repeatable)")
    parser.add_argument("--test", type=int, default=500, help="synthetic test scenes")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--meteor", action="store_true", help="also compute METEOR (needs Java)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--hard-decoding",
        default="",
        choices=["", "expectation", "argmax", "sample"],
        help="hard-attention models: inference mode (default: the model's own)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = args.model or sorted(WEIGHTS_DIR.glob("synthetic-*.safetensors"))
    print(f"synthetic test scenes: {args.test}, beam size {args.beam_size}, torch threads {args.threads}")
    print("| model | attention | " + " | ".join(COLUMNS) + " | seconds |")
    print("|---|---|" + "---|" * (len(COLUMNS) + 1))
    for path in models:
        loaded = load_model(path, expect_task="caption")
        task = loaded.task
        task.config.synthetic_test = args.test  # type: ignore[attr-defined]
        options = CaptionEvalOptions(
            split="test", beam_size=args.beam_size, meteor=args.meteor, hard_decoding=args.hard_decoding
        )
        dataset = task.eval_data(None, options)
        loader = DataLoader(dataset, batch_size=100, collate_fn=task.collate)
        start = time.perf_counter()
        with torch.no_grad():
            metrics = task.evaluate(loaded.model, loader, options)
        seconds = time.perf_counter() - start
        cells = [f"{metrics[c]:.3f}" if c in metrics else "n/a" for c in COLUMNS]
        run_file = path.name in ("best.safetensors", "last.safetensors")
        label = f"{path.parent.name}/{path.name}" if run_file else path.name
        attention = getattr(loaded.model.decoder.attention, "eval_mode", None)
        if attention is not None:
            label += f" ({args.hard_decoding or attention})"
        print(f"| {label} | {task.config.attention} | " + " | ".join(cells) + f" | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
