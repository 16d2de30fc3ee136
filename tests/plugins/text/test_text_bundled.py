"""The bundled sentiment model of ``vlattn classify`` (skipped when its weights are absent)."""

from __future__ import annotations

import pytest
import torch
from vlattn_text.predict import BUNDLED_MODEL, TextClassifier

from vlattn.checkpoint import read_header

pytestmark = pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="bundled model not built")

torch.set_num_threads(1)

POSITIVE = [
    "The battery lasts all day and the screen is gorgeous.",
    "Great food and friendly staff, we will be back!",
    "I love this headset, the sound is excellent.",
    "Delicious pizza, highly recommended.",
]
NEGATIVE = [
    "The phone broke after two days, a complete waste of money.",
    "Terrible service and the food was cold.",
    "Worst restaurant ever, I will never come back.",
    "Very disappointed, the charger does not work.",
]
# Sentences with one clear sentiment word among neutral ones: the model should attend to it.
CUES = {
    "the food was delicious": "delicious",
    "this phone is terrible": "terrible",
    "the waiter was rude to us": "rude",
    "my new headset is excellent": "excellent",
}


@pytest.fixture(scope="module")
def classifier() -> TextClassifier:
    return TextClassifier.load()


def test_small_file_with_sentiment_labels(classifier: TextClassifier) -> None:
    assert BUNDLED_MODEL.stat().st_size < 5_000_000
    header = read_header(BUNDLED_MODEL)
    assert header.task == "text-classifier"
    assert classifier.labels == ["negative", "positive"]


def test_obvious_sentences(classifier: TextClassifier) -> None:
    predictions = classifier.classify(POSITIVE + NEGATIVE)
    labels = [p.label for p in predictions]
    assert labels == ["positive"] * len(POSITIVE) + ["negative"] * len(NEGATIVE)
    assert all(p.score > 0.5 for p in predictions)


def test_attention_is_a_distribution_over_the_tokens(classifier: TextClassifier) -> None:
    for prediction in classifier.classify(POSITIVE + NEGATIVE + ["ok"]):
        assert prediction.attention is not None
        assert len(prediction.attention) == len(prediction.tokens) > 0
        assert min(prediction.attention) >= 0.0
        assert sum(prediction.attention) == pytest.approx(1.0, abs=1e-3)


def test_attention_finds_the_sentiment_word(classifier: TextClassifier) -> None:
    for prediction in classifier.classify(list(CUES)):
        assert prediction.attention is not None
        heaviest = max(zip(prediction.attention, prediction.tokens, strict=True))[1]
        assert heaviest == CUES[prediction.text], (prediction.tokens, prediction.attention)


def test_unknown_words_and_misspellings_still_classify(classifier: TextClassifier) -> None:
    predictions = classifier.classify(["zxqv", "absolutly amazng, lovd it"])
    assert all(p.label in {"positive", "negative"} for p in predictions)
    assert predictions[1].label == "positive"
