"""Scores of caption models on held-out synthetic scenes: BLEU-1..4, ROUGE-L, CIDEr-D, METEOR, grounding.

    python scripts/caption_results.py                       # the bundled soft and hard models
    python scripts/caption_results.py --model run/best.safetensors --beam-size 3
    python scripts/caption_results.py --suite varied        # one row per part of the suite, and all of it
    python scripts/caption_results.py --unseen              # and the test scenes with unseen captions
    python scripts/caption_results.py --precision bf16      # bf16 against fp32 decoding: agreement

Decodes every test scene with batched beam search (never teacher forcing), scores the corpus
with the pycocoevalcap scorers against the two template captions of each scene, and measures
grounding: the share of correctly named object nouns whose attention peak lies inside that
object's box. Prints one markdown table row per model.

``--suite NAME`` scores the scenes of a fixed test suite (``vlattn_caption.synthetic.SUITES``)
instead: one row per part and one for the whole suite. ``--unseen`` adds a row of the test
scenes whose canonical (first) caption is none of the captions of the model's training scenes,
word for word (the training split of the model's config: its data, or its synthetic scene count,
seed and scene style).

``--precision bf16`` compares instead the decoder's weight products in bfloat16 with float32
(``vlattn_caption.inference``): it decodes the test scenes in both precisions and prints, per
model, the share of identical captions, both BLEU-4s and both decoding times.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from vlattn_caption import synthetic
from vlattn_caption.dataset import CaptionEvaluationSet
from vlattn_caption.inference import Precision
from vlattn_caption.metrics import caption_scores
from vlattn_caption.predict import WEIGHTS_DIR
from vlattn_caption.records import CaptionRecord
from vlattn_caption.search import decode
from vlattn_caption.task import CaptionEvalOptions, CaptionTask
from vlattn_caption.vocab import tokenize

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


def training_captions(task: CaptionTask) -> set[tuple[str, ...]]:
    """Every tokenised caption of the training scenes of ``task``'s config.

    Synthetic scenes are drawn one at a time (only their captions are kept), so 40,000 of them
    need no image memory.
    """
    cfg = task.config
    if not task.synthetic:
        return {tuple(c) for r in task.records("train") for c in r.captions}
    style = cfg.scene_style()
    seen: set[tuple[str, ...]] = set()
    for i in range(cfg.synthetic_train):
        scene = synthetic.make_scene(cfg.synthetic_seed, "train", i, task.image_size, style)
        seen.update(tuple(tokenize(c)) for c in scene.captions)
    return seen


def suite_parts(records: list[CaptionRecord]) -> Iterator[tuple[str, list[CaptionRecord]]]:
    """``(part name, its records)`` of suite records named ``<part>/test/<index>``, in order."""
    parts: dict[str, list[CaptionRecord]] = {}
    for record in records:
        parts.setdefault(record.name.split("/")[0], []).append(record)
    yield from parts.items()


def score(
    task: CaptionTask, model: torch.nn.Module, records: list[CaptionRecord], options: CaptionEvalOptions
) -> tuple[dict[str, float], float]:
    """The metrics of ``model`` on ``records`` and the seconds they took."""
    assert task.vocab is not None
    dataset = CaptionEvaluationSet(
        records, task.vocab, task.image_size, task.config.max_caption_len, cache_images=False
    )
    loader = DataLoader(dataset, batch_size=100, collate_fn=task.collate)
    start = time.perf_counter()
    with torch.no_grad():
        metrics = task.evaluate(model, loader, options)
    return metrics, time.perf_counter() - start


def decoded_captions(
    task: CaptionTask,
    model: torch.nn.Module,
    records: list[CaptionRecord],
    options: CaptionEvalOptions,
    precision: Precision,
) -> tuple[list[list[str]], list[list[list[str]]], float]:
    """``(hypotheses, references, decoding seconds)``: every record decoded as ``task.evaluate``
    decodes it (batches of 100, the same search), the weight products in ``precision``."""
    assert task.vocab is not None
    dataset = CaptionEvaluationSet(
        records, task.vocab, task.image_size, task.config.max_caption_len, cache_images=False
    )
    hypotheses: list[list[str]] = []
    references: list[list[list[str]]] = []
    seconds = 0.0
    for batch in DataLoader(dataset, batch_size=100, collate_fn=task.collate):
        start = time.perf_counter()
        with torch.no_grad():
            annotations = model.encode(batch["images"])
            out = decode(
                model,  # type: ignore[arg-type]
                annotations,
                beam_size=options.beam_size,
                max_len=task.caption_words(options.max_len),
                alpha=options.alpha,
                hard_decoding=options.hard_decoding or None,
                precision=precision,
            )
        seconds += time.perf_counter() - start
        hypotheses.extend(task.vocab.decode(ids) for ids in out.tokens)
        references.extend(batch["references"])
    return hypotheses, references, seconds


def agreement_row(
    label: str, task: CaptionTask, model: torch.nn.Module, records: list[CaptionRecord], options: CaptionEvalOptions
) -> str:
    """A markdown row: identical captions of bf16 and fp32 decoding, both BLEU-4s and times."""
    fp32, references, fp32_s = decoded_captions(task, model, records, options, "fp32")
    bf16, _, bf16_s = decoded_captions(task, model, records, options, "bf16")
    same = sum(a == b for a, b in zip(fp32, bf16, strict=True))
    bleu = [caption_scores(h, references)["bleu4"] for h in (fp32, bf16)]
    return (
        f"| {label} | {same} of {len(records)} ({same / len(records):.1%}) | {bleu[0]:.4f} | {bleu[1]:.4f} "
        f"| {fp32_s:.2f} | {bf16_s:.2f} |"
    )


def row(label: str, attention: str, scenes: str | None, metrics: dict[str, Any], seconds: float) -> str:
    cells = [f"{metrics[c]:.3f}" if c in metrics else "n/a" for c in COLUMNS]
    scene_cell = "" if scenes is None else f"{scenes} | "
    return f"| {label} | {attention} | {scene_cell}" + " | ".join(cells) + f" | {seconds:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", help="model file (repeatable)")
    parser.add_argument("--test", type=int, default=500, help="synthetic test scenes")
    parser.add_argument("--suite", default="", choices=["", *synthetic.SUITES], help="score on this scene suite")
    parser.add_argument("--unseen", action="store_true", help="add a row of the scenes with unseen captions")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument(
        "--max-len", type=int, default=0, help="most words per decoded caption (0 = each model's eval_max_len)"
    )
    parser.add_argument("--meteor", action="store_true", help="also compute METEOR (needs Java)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="bf16: compare bfloat16 with float32 decoding (identical captions, BLEU-4s) instead of scoring",
    )
    parser.add_argument(
        "--hard-decoding",
        default="",
        choices=["", "expectation", "argmax", "sample"],
        help="hard-attention models: inference mode (default: the model's own)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = args.model or sorted(WEIGHTS_DIR.glob("synthetic-*.safetensors"))
    split_rows = bool(args.suite) or args.unseen
    if args.suite:
        parts = ", ".join(f"{p.name} {p.count}" for p in synthetic.SUITES[args.suite])
        scenes = f"scene suite {args.suite!r} ({parts})"
    else:
        scenes = f"synthetic test scenes: {args.test}"
    max_len = f", at most {args.max_len} words" if args.max_len else ", at most each model's eval_max_len words"
    print(f"{scenes}, beam size {args.beam_size}{max_len}, torch threads {args.threads}")
    if args.precision == "bf16":
        compare_precisions(models, args)
        return
    print("| model | attention | " + ("scenes | " if split_rows else "") + " | ".join(COLUMNS) + " | seconds |")
    print("|---|---|" + "---|" * (len(COLUMNS) + 1 + split_rows))
    for path in models:
        loaded, task = load_for_test(path, args)
        options = CaptionEvalOptions(
            split="test",
            beam_size=args.beam_size,
            max_len=args.max_len,
            meteor=args.meteor,
            hard_decoding=args.hard_decoding,
        )
        run_file = path.name in ("best.safetensors", "last.safetensors")
        label = f"{path.parent.name}/{path.name}" if run_file else path.name
        attention = getattr(loaded.model.decoder.attention, "eval_mode", None)
        if attention is not None:
            label += f" ({args.hard_decoding or attention})"
        mechanism = task.config.attention
        records = task.records("test")
        if args.suite:
            for name, part in suite_parts(records):
                metrics, seconds = score(task, loaded.model, part, options)
                print(row(label, mechanism, f"{name} ({len(part)})", metrics, seconds), flush=True)
        metrics, seconds = score(task, loaded.model, records, options)
        whole = f"{'all' if args.suite else 'test'} ({len(records)})" if split_rows else None
        print(row(label, mechanism, whole, metrics, seconds), flush=True)
        if args.unseen:
            seen = training_captions(task)
            unseen = [r for r in records if tuple(r.captions[0]) not in seen]
            cell = f"unseen captions ({len(unseen)} of {len(records)})"
            if unseen:
                metrics, seconds = score(task, loaded.model, unseen, options)
                print(row(label, mechanism, cell, metrics, seconds), flush=True)
            else:
                print(f"| {label} | {mechanism} | {cell} |" + " n/a |" * (len(COLUMNS) + 1), flush=True)


def load_for_test(path: Path, args: argparse.Namespace) -> tuple[Any, CaptionTask]:
    """The model file at ``path`` and its task, its test split set to the scenes ``args`` chooses."""
    loaded = load_model(path, expect_task="caption")
    task: CaptionTask = loaded.task  # type: ignore[assignment]
    task.config.synthetic_test = args.test
    task.config.synthetic_suite = args.suite
    task.config.validate()
    return loaded, task


def compare_precisions(models: list[Path], args: argparse.Namespace) -> None:
    """One :func:`agreement_row` per model file, on the scenes ``args`` chooses."""
    from vlattn_caption.inference import check_precision

    check_precision("bf16", "cpu")
    print("| model | identical captions, bf16 and fp32 | BLEU-4 fp32 | BLEU-4 bf16 | seconds fp32 | seconds bf16 |")
    print("|---|---|---|---|---|---|")
    for path in models:
        loaded, task = load_for_test(path, args)
        options = CaptionEvalOptions(
            split="test", beam_size=args.beam_size, max_len=args.max_len, hard_decoding=args.hard_decoding
        )
        model = loaded.model.eval()
        label, mode = path.name, getattr(loaded.model.decoder.attention, "eval_mode", None)
        label += f" ({args.hard_decoding or mode})" if mode is not None else ""
        print(agreement_row(label, task, model, task.records("test"), options), flush=True)


if __name__ == "__main__":
    main()
