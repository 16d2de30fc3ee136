"""Caption metrics on decoded captions: corpus BLEU-1..4, ROUGE-L, CIDEr-D (and METEOR), grounding.

The n-gram scores come from ``pycocoevalcap``, the COCO caption evaluation code (its ``Cider``
scorer is CIDEr-D). Captions are compared as lower-cased, space-joined tokens (the same
tokenisation as training), so the Java PTB tokenizer is not needed. METEOR needs Java and is
computed only when asked for and available; SPICE is not computed.

Grounding (synthetic scenes): for every object noun (``circle``, ``square`` ...) in a decoded
caption that names an object of the scene by colour and shape, whether the attention peak of
that word falls inside the object's box.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlattn.errors import VlattnError
from vlattn_caption import synthetic

INSTALL_HINT = "pip install pycocoevalcap"


def _scorers(meteor: bool) -> list[tuple[Any, list[str]]]:
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        raise VlattnError(f"caption metrics need the pycocoevalcap package: {INSTALL_HINT}") from None
    scorers: list[tuple[Any, list[str]]] = [
        (Bleu(4), ["bleu1", "bleu2", "bleu3", "bleu4"]),
        (Rouge(), ["rouge_l"]),
        (Cider(), ["cider_d"]),
    ]
    if meteor and meteor_available():
        from pycocoevalcap.meteor.meteor import Meteor

        scorers.append((Meteor(), ["meteor"]))
    return scorers


def meteor_available() -> bool:
    """True when Java and pycocoevalcap's METEOR jar are present."""
    if shutil.which("java") is None:
        return False
    try:
        import pycocoevalcap.meteor.meteor as module
    except ImportError:
        return False
    from pathlib import Path

    return (Path(module.__file__).parent / "meteor-1.5.jar").exists()


def caption_scores(
    hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]], meteor: bool = False
) -> dict[str, float]:
    """Corpus-level scores of tokenised ``hypotheses`` (one per image) against ``references``.

    Returns ``bleu1..bleu4``, ``rouge_l``, ``cider_d`` (and ``meteor``) as floats in the usual
    scales (BLEU/ROUGE/METEOR in 0..1; CIDEr-D typically 0..10), and ``exact_match``: the share of
    hypotheses equal to one of their references.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    if not hypotheses:
        return {}
    res = {i: [" ".join(h) if h else "<empty>"] for i, h in enumerate(hypotheses)}
    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    exact = sum(any(list(h) == list(r) for r in refs) for h, refs in zip(hypotheses, references, strict=True))
    results: dict[str, float] = {"exact_match": exact / len(hypotheses)}
    for scorer, names in _scorers(meteor):
        with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints its progress
            score, _ = scorer.compute_score(gts, res)
        values = score if isinstance(score, list) else [score]
        results.update({n: float(v) for n, v in zip(names, values, strict=True)})
    return results


def grounding_counts(
    words: Sequence[str], weights: np.ndarray, objects: Sequence[dict[str, Any]], image_size: int, grid: int
) -> tuple[int, int, int]:
    """``(grounded, groundable, object_words)`` for one decoded caption.

    Args:
        words: the decoded words.
        weights: ``[n_words, L]`` attention weights of those words (``L = grid * grid``).
        objects: the scene's objects (``{"colour", "shape", "box"}``, boxes in pixels).
        image_size: side of the image the boxes refer to.
        grid: side of the attention grid.

    ``object_words`` counts the object nouns in the caption, ``groundable`` those naming a real
    object of the scene (colour + shape), ``grounded`` those whose attention peak is in its box.
    """
    nouns = synthetic.object_words()
    scene = [synthetic.SceneObject(o["colour"], o["shape"], o.get("size", ""), tuple(o["box"])) for o in objects]
    grounded = groundable = mentioned = 0
    for t, word in enumerate(words):
        if word not in nouns:
            continue
        mentioned += 1
        colour = words[t - 1] if t > 0 and words[t - 1] in synthetic.COLOURS else None
        target = synthetic.find_object(scene, colour, word)
        if target is None or t >= len(weights):
            continue
        groundable += 1
        grid_map = np.asarray(weights[t], dtype=np.float64).reshape(grid, grid)
        grounded += synthetic.peak_in_box(grid_map, target.box, image_size)
    return grounded, groundable, mentioned
