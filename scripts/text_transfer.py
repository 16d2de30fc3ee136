"""Train on one review domain, test on another: vlattn's text recipes against what a user could run instead.

    OMP_NUM_THREADS=1 python scripts/text_transfer.py --data ../shared/data/sentiment --directions amazon:yelp

Each direction ``source:target`` trains on all of the source file's sentences (UCI ``*_labelled.txt``
files, named by their first word) and reports the accuracy on every sentence of the target file.
The vlattn recipes (``scripts/text_results.py``) train through ``vlattn.train.fit`` with the target
as ``--val-data``; the figure is the LAST epoch's (no epoch is chosen on the target). Beside them,
in the same run: TF-IDF + logistic regression, and all-MiniLM-L6-v2 fine-tuned the way a
sentence-transformers user would (``--baselines``; ``scripts/text_baselines.py``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from text_baselines import Fold, sentence_transformers_finetune, tfidf_logreg
from text_results import RECIPES

BASELINES = ("tfidf", "st-finetune")


def read_uci(path: Path) -> tuple[list[str], list[str]]:
    """Texts and labels of a UCI ``sentence<TAB>label`` file (vlattn's own reader)."""
    from vlattn_text.data import read_examples

    examples = read_examples([str(path)])
    return [e.text for e in examples], [e.label for e in examples]


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
