"""CPU speed of the text classifiers: ``vlattn classify`` throughput and training seconds per epoch.

    python scripts/bench_text_classify.py --data ../shared/data/sentiment

* classify: 10,000 sentences (the 2,000 UCI sentences cycled five times; nothing is cached
  between repeats of a text) through each model of ``--models`` (``NAME@PRECISION`` picks
  ``--precision``), in-process (``TextClassifier.classify``) and end to end (``vlattn classify
  --file ... --json`` in a fresh process, start-up and model loading included), and one sentence
  in a fresh process (the fixed start-up cost); medians of ``--repeats`` runs.
* ``--against-sentence-transformers MODEL``: the same sentences through ``MODEL`` (in each
  precision of ``--precisions``) and sentence-transformers' ``encode`` of all-MiniLM-L6-v2,
  interleaved in one process. Both sides get the same work: one thread (``torch.set_num_threads``
  and ``TOKENIZERS_PARALLELISM=false``), batches of 32, the same maximum length (128 word pieces),
  texts sorted by length before batching, no gradients (sentence-transformers runs under
  ``torch.inference_mode``, as ``vlattn classify`` does). sentence-transformers mean-pools the
  last layer; ``vlattn`` pools five layers with attention and applies its head (a small extra).
  Wall seconds and the thread's CPU seconds are both reported (on a busy machine CPU seconds are
  the steadier figure).
* training: seconds per epoch of each recipe of ``scripts/text_results.py`` on the tutorial split
  (1,600 training sentences, validation included), median over the epochs of one short run.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread on both sides, tokenizers included
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from text_results import RECIPES


def sentences(data: list[str], count: int) -> list[str]:
    from vlattn_text.data import read_examples

    texts = [e.text for e in read_examples(data)]
    return [texts[i % len(texts)] for i in range(count)]


def split_model(spec: str) -> tuple[str | None, str]:
    """``NAME[@PRECISION]`` -> (model path or bundled name, ``None`` for the default; precision)."""
    name, _, precision = spec.partition("@")
    return (None if name == "bundled" else name), precision or "fp32"


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """``(wall seconds, this thread's CPU seconds)`` of ``run()``."""
    wall, cpu = time.perf_counter(), time.thread_time()
    run()
    return time.perf_counter() - wall, time.thread_time() - cpu


def bench_classify(texts: list[str], repeats: int, threads: int, spec: str) -> dict[str, float]:
    import torch
    from vlattn_text.predict import TextClassifier

    model, precision = split_model(spec)
    torch.set_num_threads(threads)
    classifier = TextClassifier.load(model)
    classifier.set_precision(precision)
    classifier.classify(texts[:256])  # warm-up
    in_process = [timed(lambda: classifier.classify(texts)) for _ in range(repeats)]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(texts) + "\n")
        path = fh.name
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    which = [*(["--model", model] if model else []), "--precision", precision]
    end_to_end = []
    for _ in range(repeats):
        start = time.perf_counter()
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
            [sys.executable, "-m", "vlattn", "classify", *which, "--json", "ok"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        start_up.append(time.perf_counter() - start)
    return {
        "in_process_s": statistics.median(w for w, _ in in_process),
        "in_process_cpu_s": statistics.median(c for _, c in in_process),
        "end_to_end_s": statistics.median(end_to_end),
        "one_sentence_s": statistics.median(start_up),
    }


def bench_against_sentence_transformers(
    texts: list[str], model: str, precisions: list[str], repeats: int, threads: int
) -> dict[str, float]:
    """Interleaved, in one process: ``vlattn``'s classify (encoder + attention pooling + head) on a
    pretrained model in each of ``precisions``, and sentence-transformers' ``encode`` of
    all-MiniLM-L6-v2 (encoder + mean pooling), on the same sentences; medians of ``repeats`` each
    (``<side>_s`` wall seconds, ``<side>_cpu_s`` the thread's CPU seconds)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from vlattn_text.predict import TextClassifier
    from vlattn_text.pretrained.source import find_encoder

    torch.set_num_threads(threads)
    ours = {}
    for precision in precisions:
        ours[precision] = TextClassifier.load(model)
        ours[precision].set_precision(precision)
        ours[precision].classify(texts[:256])
    max_len = ours[precisions[0]].task.tokenizer.max_len  # type: ignore[union-attr]
    theirs = SentenceTransformer(str(find_encoder("minilm").folder), device="cpu")
    theirs.max_seq_length = max_len  # the same truncation on both sides
    theirs.encode(texts[:256])
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in [*precisions, "sentence_transformers"]}
    for _ in range(repeats):
        for precision, classifier in ours.items():
            runs[precision].append(timed(lambda c=classifier: c.classify(texts, batch_size=32)))
        runs["sentence_transformers"].append(timed(lambda: theirs.encode(texts, batch_size=32)))  # its default
    figures = {}
    for name, times in runs.items():
        side = name if name == "sentence_transformers" else f"vlattn_{name}"
        figures[f"{side}_s"] = statistics.median(w for w, _ in times)
        figures[f"{side}_cpu_s"] = statistics.median(c for _, c in times)
    return figures


def precision_agreement(data: list[str], model: str, precision: str) -> dict[str, float]:
    """``model`` in ``precision`` against fp32 on the labelled sentences of ``data``: the share of
    equal predictions, both accuracies, the largest probability change, and the largest absolute
    difference of the encoder's pooled states (the mixed hidden states on real tokens)."""
    import torch
    from vlattn_text.data import read_examples
    from vlattn_text.predict import TextClassifier

    examples = read_examples(data)
    texts = [e.text for e in examples]
    fp32, other = TextClassifier.load(model), TextClassifier.load(model)
    other.set_precision(precision)
    exact, approximate = fp32.classify(texts), other.classify(texts)
    truth = [e.label for e in examples]  # the UCI 0 / 1 already named as the model's classes
    hidden = 0.0
    with torch.inference_mode():
        for start in range(0, len(texts), 32):
            encoded = fp32.task.encode_many(texts[start : start + 32])
            batch = fp32.task.collate([fp32.task.make_item(e) for e in encoded])
            a, mask, _ = fp32.model.encode(batch.ids, batch.lengths)
            b, _, _ = other.model.encode(batch.ids, batch.lengths)
            hidden = max(hidden, float((a - b)[mask].abs().max()))
    n = len(texts)
    return {
        "sentences": n,
        "agreement": sum(p.label == q.label for p, q in zip(exact, approximate, strict=True)) / n,
        "accuracy_fp32": sum(p.label == t for p, t in zip(exact, truth, strict=True)) / n,
        "accuracy": sum(q.label == t for q, t in zip(approximate, truth, strict=True)) / n,
        "max_probability_change": max(
            abs(p.probabilities[label] - q.probabilities[label])
            for p, q in zip(exact, approximate, strict=True)
            for label in p.probabilities
        ),
        "max_hidden_abs_difference": hidden,
    }


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
        help="comma-separated model files or bundled names to time classify with, each NAME[@fp32|@bf16|@int8] "
        "(bundled = the default sentiment model)",
    )
    parser.add_argument(
        "--against-sentence-transformers",
        default="",
        metavar="MODEL",
        help="a pretrained-encoder model file or bundled name: time it beside sentence-transformers' encode",
    )
    parser.add_argument(
        "--agreement",
        default="",
        metavar="MODEL",
        help="a pretrained-encoder model: compare its predictions in each other precision of --precisions "
        "with fp32 on the labelled --data",
    )
    parser.add_argument("--precisions", default="fp32,bf16,int8", help="precisions timed beside sentence-transformers")
    args = parser.parse_args(argv)
    data = [p for p in args.data.split(",") if p]

    texts = sentences(data, args.count)
    classify: dict[str, dict[str, float]] = {}
    for spec in [m for m in args.models.split(",") if m]:
        figures = bench_classify(texts, args.repeats, args.threads, spec)
        classify[spec] = figures
        print(f"classify {args.count} sentences, {args.threads} thread(s), model {spec}:")
        rate = args.count / figures["in_process_s"]
        print(
            f"  in-process: {figures['in_process_s']:.2f} s ({rate:,.0f} sentences/s; "
            f"{figures['in_process_cpu_s']:.2f} CPU s)"
        )
        print(f"  vlattn classify --file --json (new process): {figures['end_to_end_s']:.2f} s")
        print(f"  vlattn classify --json 'ok' (new process, one sentence): {figures['one_sentence_s']:.2f} s")
    if args.against_sentence_transformers:
        precisions = [p for p in args.precisions.split(",") if p]
        pair = bench_against_sentence_transformers(
            texts, args.against_sentence_transformers, precisions, args.repeats, args.threads
        )
        classify["against_sentence_transformers"] = pair
        print(f"same {args.count} sentences, interleaved, {args.threads} thread(s), median of {args.repeats}:")
        theirs, theirs_cpu = pair["sentence_transformers_s"], pair["sentence_transformers_cpu_s"]
        print(f"  sentence-transformers encode: {theirs:.2f} s ({theirs_cpu:.2f} CPU s)")
        for precision in precisions:
            wall, cpu = pair[f"vlattn_{precision}_s"], pair[f"vlattn_{precision}_cpu_s"]
            print(
                f"  vlattn classify --precision {precision}: {wall:.2f} s ({cpu:.2f} CPU s, "
                f"{args.count / wall:,.0f} sentences/s): {theirs / wall:.2f}x its throughput "
                f"({theirs_cpu / cpu:.2f}x by CPU seconds)"
            )
    for precision in [p for p in args.precisions.split(",") if p and p != "fp32"] if args.agreement else []:
        agreement = precision_agreement(data, args.agreement, precision)
        classify[f"{precision}_agreement"] = agreement
        print(
            f"{precision} against fp32 on {agreement['sentences']:,} labelled sentences: "
            f"{agreement['agreement']:.2%} equal predictions, accuracy {agreement['accuracy']:.2%} "
            f"(fp32 {agreement['accuracy_fp32']:.2%}), largest probability change "
            f"{agreement['max_probability_change']:.3f}, largest hidden-state difference "
            f"{agreement['max_hidden_abs_difference']:.3f}"
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
