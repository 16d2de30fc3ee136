"""Caption metrics (pycocoevalcap scorers), grounding, and attention overlays."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlattn.viz.overlay import heatmap, overlay, upsample, word_attention_figure

pytest.importorskip("pycocoevalcap", reason="caption metrics need pycocoevalcap")

from vlattn_caption.metrics import caption_scores, grounding_counts

REFS = [
    [
        ["a", "red", "circle", "left", "of", "a", "blue", "square"],
        ["a", "blue", "square", "right", "of", "a", "red", "circle"],
    ],
    [["a", "large", "green", "triangle"], ["there", "is", "a", "large", "green", "triangle"]],
    [["a", "small", "white", "cross", "above", "a", "small", "yellow", "diamond"]],
]


def test_perfect_captions_score_one() -> None:
    scores = caption_scores([r[0] for r in REFS], REFS)
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "exact_match"):
        assert scores[key] == pytest.approx(1.0, abs=1e-6)
    assert scores["cider_d"] > 1.0
    second_reference = caption_scores([REFS[0][-1], ["a", "cat"], *[r[0] for r in REFS[2:]]], REFS)
    assert second_reference["exact_match"] == pytest.approx((len(REFS) - 1) / len(REFS))


def test_wrong_words_lower_every_score() -> None:
    perfect = caption_scores([r[0] for r in REFS], REFS)
    wrong = [
        ["a", "red", "square", "left", "of", "a", "blue", "circle"],
        ["a", "small", "green", "triangle"],
        ["a", "white", "cross"],
    ]
    worse = caption_scores(wrong, REFS)
    for key in ("bleu1", "bleu4", "rouge_l", "cider_d"):
        assert worse[key] < perfect[key]


def test_scores_match_hand_computed_values() -> None:
    """BLEU, ROUGE-L and CIDEr-D worked out by hand for a two-image corpus."""
    import math

    one = caption_scores([["the", "cat", "sat", "on", "the", "mat"]], [[["the", "cat", "is", "on", "the", "mat"]]])
    # clipped n-gram precisions 5/6, 3/5, 1/4, 0/3; equal lengths: no brevity penalty
    assert one["bleu1"] == pytest.approx(5 / 6, abs=1e-8)
    assert one["bleu2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5), abs=1e-8)
    assert one["bleu3"] == pytest.approx(0.5, abs=1e-8)
    assert one["bleu4"] < 1e-3  # no 4-gram matches (the scorer smooths zero counts by 1e-9)
    assert one["rouge_l"] == pytest.approx(5 / 6, abs=1e-8)  # LCS 5 of 6 words both ways
    two = caption_scores(
        [["the", "cat", "sat", "on", "the", "mat"], ["a", "dog", "runs"]],
        [[["the", "cat", "is", "on", "the", "mat"]], [["a", "dog", "runs", "fast"]]],
    )
    # corpus BLEU-1: 8 of 9 words match, brevity penalty exp(1 - 10 / 9)
    assert two["bleu1"] == pytest.approx(8 / 9 * math.exp(1 - 10 / 9), abs=1e-8)
    # CIDEr-D: every n-gram has the same idf (log 2), so each n gives the cosine of term counts;
    # image 1: (7/8 + 3/5 + 1/4 + 0) / 4; image 2: (3/sqrt(12) + 2/sqrt(6) + 1/sqrt(2) + 0) / 4 times
    # the length penalty exp(-1 / 72); times 10, averaged over images.
    image1 = (7 / 8 + 3 / 5 + 1 / 4) / 4
    image2 = (3 / math.sqrt(12) + 2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert two["cider_d"] == pytest.approx(10 * (image1 + image2) / 2, abs=1e-6)


def test_scores_need_one_hypothesis_per_image() -> None:
    with pytest.raises(ValueError, match="hypotheses"):
        caption_scores([["a"]], REFS)


def test_grounding_counts_peaks_inside_named_boxes() -> None:
    objects = [
        {"colour": "red", "shape": "circle", "box": [0, 0, 16, 16]},
        {"colour": "blue", "shape": "square", "box": [32, 32, 64, 64]},
    ]
    words = ["a", "red", "circle", "left", "of", "a", "blue", "square"]
    weights = np.full((len(words), 16), 1 / 16)
    weights[2] = 0
    weights[2, 0] = 1.0  # "circle" peaks in the top-left cell (centre 8, 8): inside
    weights[7] = 0
    weights[7, 5] = 1.0  # "square" peaks at cell (1, 1) (centre 24, 24): outside its box
    assert grounding_counts(words, weights, objects, image_size=64, grid=4) == (1, 2, 2)
    hallucinated = ["a", "green", "circle"]
    assert grounding_counts(hallucinated, np.full((3, 16), 1 / 16), objects, 64, 4) == (0, 0, 1)


def test_overlay_darkens_unattended_pixels() -> None:
    image = Image.new("RGB", (40, 40), (200, 200, 200))
    grid = np.zeros((2, 2))
    grid[0, 0] = 1.0
    out = np.asarray(overlay(image, grid, smooth=False))
    assert out[5, 5, 0] == 200 and out[35, 35, 0] == 50
    assert upsample(grid, (40, 40)).max() == pytest.approx(1.0)
    assert heatmap(image, grid).size == (40, 40)


def test_word_figure_has_a_panel_per_word() -> None:
    image = Image.new("RGB", (64, 32), "gray")
    figure = word_attention_figure(
        image, ["a", "red", "circle"], np.random.default_rng(0).random((3, 4, 4)), panel=100, columns=5
    )
    assert figure.size == (400, 50 + 18)
    wrapped = word_attention_figure(image, ["w"] * 7, np.ones((7, 2, 2)), panel=100, columns=3)
    assert wrapped.size == (300, 3 * 68)
    with pytest.raises(ValueError, match="words, h, w"):
        word_attention_figure(image, ["a"], np.ones((2, 2)))


def test_missing_pycocoevalcap_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from vlattn.errors import VlattnError

    monkeypatch.setitem(sys.modules, "pycocoevalcap.bleu.bleu", None)
    with pytest.raises(VlattnError, match="pip install pycocoevalcap"):
        caption_scores([["a"]], [[["a"]]])
