"""Ensembles of text classifiers: averaged probabilities and attention, one loss per member."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_text_models import make_corpus, padded
from vlattn_text.config import TextClassifierConfig
from vlattn_text.ensemble import Ensemble, mean_probability_logits
from vlattn_text.predict import TextClassifier
from vlattn_text.task import TextClassifierTask, class_probabilities, classification_loss

from vlattn.config import ConfigError, from_mapping

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("classes", [1, 4])
def test_mean_probability_logits_give_the_mean_probability(classes: int) -> None:
    members = torch.randn(3, 5, classes) * 20  # confident members must not overflow
    expected = torch.stack([class_probabilities(m) for m in members]).mean(0)
    got = class_probabilities(mean_probability_logits(members))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def _task(data: Path, **options: object) -> TextClassifierTask:
    return TextClassifierTask(
        from_mapping(
            TextClassifierConfig,
            {
                "data": [str(data)],
                "embed_dim": 8,
                "hidden_size": 8,
                "word_dropout": 0.0,
                "embed_dropout": 0.0,
                "dropout": 0.0,
                **options,
            },
        )
    )


def test_each_member_learns_from_its_own_loss_only(tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "two.txt", {"0": ["bad"], "1": ["good"]}, n=40)
    torch.manual_seed(0)
    task = _task(data, ensemble=3)
    splits = task.setup_data()
    model = task.build_model().train()
    assert isinstance(model, Ensemble) and len(model.members) == 3
    first, second = model.members[0].classifier.weight, model.members[1].classifier.weight
    assert not torch.equal(first, second)  # independently initialised
    batch = task.collate(list(splits.train)[:8])
    loss, logits = task.loss(model, batch)
    loss.backward()
    solo = model.members[0]
    solo_grads = torch.autograd.grad(
        classification_loss(solo(batch.ids, batch.lengths).logits, batch.labels), list(solo.parameters())
    )
    for param, grad in zip(solo.parameters(), solo_grads, strict=True):
        torch.testing.assert_close(param.grad, grad)
    assert logits.shape == (8, 1)


def test_ensemble_trains_saves_and_classifies_with_mean_attention(tmp_path: Path) -> None:
    from vlattn.train import fit

    data = make_corpus(
        tmp_path / "three.txt", {"red": ["apple", "cherry"], "green": ["lime", "leaf"], "blue": ["sky", "sea"]}, n=150
    )
    config = {"data": [str(data)], "split": "random", "embed_dim": 16, "hidden_size": 16, "ensemble": 2}
    fit(
        "text-classifier",
        config,
        {"epochs": 10, "quiet": True, "tensorboard": False, "threads": 1, "batch_size": 16, "lr": 5e-3},
        tmp_path / "run",
    )
    classifier = TextClassifier.load(tmp_path / "run")
    model = classifier.model
    assert isinstance(model, Ensemble)
    ids, lengths = padded([classifier.task.encode("the sky was very blue").ids], 5)
    with torch.no_grad():
        out = model(ids, lengths)
        members = [member(ids, lengths) for member in model.members]
    assert out.weights is not None
    torch.testing.assert_close(out.weights, (members[0].weights + members[1].weights) / 2)
    prediction = classifier.classify(["the sky was very blue"])[0]
    assert prediction.label == "blue"
    assert prediction.attention is not None and abs(sum(prediction.attention) - 1) < 1e-4
    assert prediction.tokens[max(range(5), key=prediction.attention.__getitem__)] == "sky"


def test_ensemble_size_is_validated() -> None:
    with pytest.raises(ConfigError, match="ensemble"):
        from_mapping(TextClassifierConfig, {"ensemble": 0})
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble(lambda: torch.nn.Linear(1, 1), 1)
