"""Train on one review domain, test on another: vlattn's text recipes against what a user could run instead.

    OMP_NUM_THREADS=1 python scripts/text_transfer.py --data ../shared/data/sentiment --directions amazon:yelp

Each direction ``source:target`` trains on all of the source file's sentences (UCI ``*_labelled.txt``
files, named by their first word) and reports the accuracy on every sentence of the target file.
The vlattn recipes (``scripts/text_results.py``) train through ``vlattn.train.fit`` with the target
as ``--val-data``; the figure is the LAST epoch's (no epoch is chosen on the target). Beside them,
in the same run: TF-IDF + logistic regression, and all-MiniLM-L6-v2 fine-tuned the way a
sentence-transformers user would (``--baselines``, see :func:`sentence_transformers_finetune`).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from text_baselines import Fold, tfidf_logreg
from text_results import RECIPES

BASELINES = ("tfidf", "st-finetune")


def read_uci(path: Path) -> tuple[list[str], list[str]]:
    """Texts and labels of a UCI ``sentence<TAB>label`` file (vlattn's own reader)."""
    from vlattn_text.data import read_examples

    examples = read_examples([str(path)])
    return [e.text for e in examples], [e.label for e in examples]


def sentence_transformers_finetune(fold: Fold, seed: int = 0, epochs: int = 3, lr: float = 5e-5) -> float:
    """all-MiniLM-L6-v2 through sentence-transformers (its mean pooling and normalisation), a linear
    layer on the sentence embedding, everything trained by AdamW (lr 5e-5, linear decay, batch 32,
    at most 64 tokens, 3 epochs) on cross-entropy; accuracy on the fold's validation part."""
    import torch
    from vlattn_text.pretrained.source import find_encoder

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        message = "the st-finetune baseline needs sentence-transformers (pip install sentence-transformers)"
        raise SystemExit(message) from None

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = SentenceTransformer(str(find_encoder("minilm").folder), device="cpu")
    model.max_seq_length = 64
    classes = sorted(set(fold.train_labels))
    dimension = getattr(model, "get_embedding_dimension", model.get_sentence_embedding_dimension)()
    head = torch.nn.Linear(dimension or 384, len(classes))
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    order = list(range(len(fold.train_texts)))
    steps = epochs * ((len(order) + 31) // 32)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / steps))
    labels = torch.tensor([classes.index(y) for y in fold.train_labels])

    def embed(texts: list[str]) -> torch.Tensor:
        features = getattr(model, "preprocess", model.tokenize)(texts)  # tokenize before 6.x
        return model(features)["sentence_embedding"]

    model.train()
    for _ in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            loss = torch.nn.functional.cross_entropy(head(embed([fold.train_texts[i] for i in batch])), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(fold.val_texts), 64):
            texts = fold.val_texts[start : start + 64]
            predicted = head(embed(texts)).argmax(-1).tolist()
            truth = fold.val_labels[start : start + 64]
            correct += sum(classes[p] == y for p, y in zip(predicted, truth, strict=True))
    return correct / len(fold.val_texts)


def run_recipe(name: str, source: Path, target: Path, seed: int, work: Path) -> float:
    """Last-epoch accuracy on ``target`` of recipe ``name`` trained on all of ``source``."""
    from vlattn.train import fit
    from vlattn.train.logging import read_metrics

    recipe = RECIPES[name]
    task = {"data": [str(source)], "val_data": [str(target)], **recipe["task"]}
    trainer = {"seed": seed, "quiet": True, "tensorboard": False, "threads": 1, **recipe["trainer"]}
    out = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    fit("text-classifier", task, trainer, out)
    return float([r["accuracy"] for r in read_metrics(out) if r.get("split") == "val"][-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/sentiment"))
    parser.add_argument("--directions", default="amazon:yelp,yelp:amazon", help="source:target pairs")
    parser.add_argument("--models", default="pretrained-finetune,pretrained-frozen,ours-linear")
    parser.add_argument("--baselines", default=",".join(BASELINES), help=f"of: {', '.join(BASELINES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="folder for run folders (default: a temporary one)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="vlattn-text-transfer-"))
    work.mkdir(parents=True, exist_ok=True)
    files = {p.name.split("_")[0]: p for p in sorted(args.data.glob("*_labelled.txt"))}
    rows: list[dict[str, Any]] = []
    for direction in [d for d in args.directions.split(",") if d]:
        source_name, target_name = direction.split(":")
        if source_name not in files or target_name not in files:
            raise SystemExit(f"no {source_name} or {target_name} file in {args.data} (have: {', '.join(files)})")
        source, target = files[source_name], files[target_name]
        fold = Fold(*read_uci(source), *read_uci(target))
        for name in [m for m in args.models.split(",") if m]:
            start = time.perf_counter()
            accuracy = run_recipe(name, source, target, args.seed, work)
            rows.append({"direction": direction, "model": name, "accuracy": accuracy, "s": time.perf_counter() - start})
            print(rows[-1], flush=True)
        for name in [b for b in args.baselines.split(",") if b]:
            start = time.perf_counter()
            if name == "tfidf":
                accuracy = tfidf_logreg(fold)
            elif name == "st-finetune":
                accuracy = sentence_transformers_finetune(fold, args.seed)
            else:
                raise SystemExit(f"unknown baseline {name!r} (known: {', '.join(BASELINES)})")
            rows.append({"direction": direction, "model": name, "accuracy": accuracy, "s": time.perf_counter() - start})
            print(rows[-1], flush=True)
    print("| train -> test | model | accuracy | seconds |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        arrow = row["direction"].replace(":", " -> ")
        print(f"| {arrow} | {row['model']} | {100 * row['accuracy']:.1f} | {row['s']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
