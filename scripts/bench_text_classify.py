"""CPU speed of the text classifiers: ``vlattn classify`` throughput and training seconds per epoch.

    python scripts/bench_text_classify.py --data ../shared/data/sentiment

* classify: 10,000 sentences (the UCI sentences repeated) through the bundled model, in-process
  (``TextClassifier.classify``) and end to end (``vlattn classify --file ... --json`` in a fresh
  process, start-up and model loading included), and one sentence in a fresh process (the fixed
  start-up cost); medians of ``--repeats`` runs.
* training: seconds per epoch of each recipe of ``scripts/text_results.py`` on the tutorial split
  (1,600 training sentences, validation included), median over the epochs of one short run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from text_results import RECIPES


def sentences(data: list[str], count: int) -> list[str]:
    from vlattn_text.data import read_examples

    texts = [e.text for e in read_examples(data)]
    return [texts[i % len(texts)] for i in range(count)]


def bench_classify(texts: list[str], repeats: int, threads: int, model: str | None = None) -> dict[str, float]:
    import torch
    from vlattn_text.predict import TextClassifier

    torch.set_num_threads(threads)
    classifier = TextClassifier.load(model)
    classifier.classify(texts[:256])  # warm-up
    in_process = []
    for _ in range(repeats):
        start = time.perf_counter()
        classifier.classify(texts)
        in_process.append(time.perf_counter() - start)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(texts) + "\n")
        path = fh.name
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    end_to_end = []
    for _ in range(repeats):
        start = time.perf_counter()
        which = ["--model", model] if model else []
        proc = subprocess.run(
            [sys.executable, "-m", "vlattn", "classify", *which, "--json", "--file", path],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        end_to_end.append(time.perf_counter() - start)
        assert len(proc.stdout.splitlines()) == len(texts)
    Path(path).unlink()
    start_up = []  # the fixed cost of a new process: Python, torch, plugins, the model file; one sentence
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "vlattn", "classify", *(["--model", model] if model else []), "--json", "ok"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        start_up.append(time.perf_counter() - start)
    return {
        "in_process_s": statistics.median(in_process),
        "end_to_end_s": statistics.median(end_to_end),
        "one_sentence_s": statistics.median(start_up),
    }


def bench_against_sentence_transformers(texts: list[str], model: str, repeats: int, threads: int) -> dict[str, float]:
    """Interleaved, in one process: ``vlattn``'s classify (encoder + attention pooling + head) on a
    pretrained model, and sentence-transformers' ``encode`` of all-MiniLM-L6-v2 (encoder + mean
    pooling), on the same sentences; medians of ``repeats`` each."""
    import torch
    from sentence_transformers import SentenceTransformer
    from vlattn_text.predict import TextClassifier
    from vlattn_text.pretrained.source import find_encoder

    torch.set_num_threads(threads)
    ours = TextClassifier.load(model)
    theirs = SentenceTransformer(str(find_encoder("minilm").folder), device="cpu")
    ours.classify(texts[:256])
    theirs.encode(texts[:256])
    ours_s, theirs_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours.classify(texts)
        ours_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs.encode(texts, batch_size=32)  # its default batch size
        theirs_s.append(time.perf_counter() - start)
    return {"vlattn_s": statistics.median(ours_s), "sentence_transformers_s": statistics.median(theirs_s)}


def bench_training(data: list[str], recipe_names: list[str], epochs: int, threads: int) -> dict[str, float]:
    from vlattn.train import fit

    figures = {}
    for name in recipe_names:
        recipe = RECIPES[name]
        with tempfile.TemporaryDirectory() as work:
            task_config = {"data": data, **recipe["task"], "split": "last", "val_split": 0.2}
            trainer = {**recipe["trainer"], "epochs": epochs, "quiet": True, "tensorboard": False, "threads": threads}
            start = time.perf_counter()
            fit("text-classifier", task_config, trainer, Path(work) / "run")
            figures[name] = (time.perf_counter() - start) / epochs
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/sentiment")
    parser.add_argument("--count", type=int, default=10_000, help="sentences to classify")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-epochs", type=int, default=3, help="epochs timed per recipe (0 = skip)")
    parser.add_argument(
        "--recipes", default="tutorial-lstm,tutorial-attention,ours", help=f"comma-separated, of: {', '.join(RECIPES)}"
    )
    parser.add_argument(
        "--models",
        default="bundled",
        help="comma-separated model files to time classify with (bundled = the bundled sentiment model)",
    )
    parser.add_argument(
        "--against-sentence-transformers",
        default="",
        metavar="MODEL",
        help="a pretrained-encoder model file: time it beside sentence-transformers' encode",
    )
    args = parser.parse_args(argv)
    data = [p for p in args.data.split(",") if p]

    texts = sentences(data, args.count)
    classify: dict[str, dict[str, float]] = {}
    for name in [m for m in args.models.split(",") if m]:
        figures = bench_classify(texts, args.repeats, args.threads, None if name == "bundled" else name)
        classify[name] = figures
        print(f"classify {args.count} sentences, {args.threads} thread(s), model {name}:")
        rate = args.count / figures["in_process_s"]
        print(f"  in-process: {figures['in_process_s']:.2f} s ({rate:,.0f} sentences/s)")
        print(f"  vlattn classify --file --json (new process): {figures['end_to_end_s']:.2f} s")
        print(f"  vlattn classify --json 'ok' (new process, one sentence): {figures['one_sentence_s']:.2f} s")
    if args.against_sentence_transformers:
        pair = bench_against_sentence_transformers(
            texts, args.against_sentence_transformers, args.repeats, args.threads
        )
        classify["against_sentence_transformers"] = pair
        print(
            f"same {args.count} sentences, interleaved, {args.threads} thread(s): vlattn classify "
            f"{pair['vlattn_s']:.2f} s, sentence-transformers encode {pair['sentence_transformers_s']:.2f} s: "
            f"{pair['sentence_transformers_s'] / pair['vlattn_s']:.2f}x its throughput"
        )
    training = {}
    if args.train_epochs:
        training = bench_training(data, [r for r in args.recipes.split(",") if r], args.train_epochs, args.threads)
        print(f"training seconds per epoch (1,600 sentences + 400 validated, {args.threads} thread(s)):")
        for name, seconds in training.items():
            print(f"  {name}: {seconds:.2f} s")
    print(json.dumps({"classify": classify, "train_sec_per_epoch": training}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
