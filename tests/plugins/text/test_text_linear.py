"""The naive Bayes logistic regression member (``--linear nb-logreg``): its fit, its mixture, its file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_text_ensemble import _task
from test_text_models import make_corpus
from vlattn_text.config import TextClassifierConfig
from vlattn_text.ensemble import Ensemble
from vlattn_text.linear import NaiveBayesLogistic
from vlattn_text.ngram import bag_ratios, unique_rows
from vlattn_text.predict import TextClassifier
from vlattn_text.task import class_probabilities

from vlattn.config import ConfigError, from_mapping

pytestmark = pytest.mark.usefixtures("one_thread")


def _toy(seed: int = 0, texts: int = 120, vocab: int = 30) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Texts whose label follows a few cue words, with character-gram ids per word."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (texts, 8), generator=g)
    ids[:, 6:] = torch.where(torch.rand(texts, 2, generator=g) < 0.5, 0, ids[:, 6:])  # ragged lengths
    labels = ((ids == 3).any(1) | (ids == 5).any(1)).long() ^ (torch.rand(texts, generator=g) < 0.1).long()
    subwords = (ids[..., None] * 7 + torch.arange(3)) % 50 + 1
    subwords = subwords.masked_fill(ids[..., None] == 0, 0)
    return ids, subwords, labels


def test_unique_rows_keep_each_id_once() -> None:
    rows = unique_rows(torch.tensor([[4, 2, 4, 0, 2], [1, 1, 1, 1, 1]]))
    assert sorted(rows[0].tolist()) == [0, 0, 0, 2, 4] and sorted(rows[1].tolist()) == [0, 0, 0, 0, 1]


def test_fit_reaches_the_penalised_optimum_and_matches_scikit_learn() -> None:
    """At the fitted weights the objective's gradient vanishes, and scikit-learn's
    LogisticRegression on the same naive Bayes-scaled bags gives the same decision values."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    ids, subwords, labels = _toy()
    model = NaiveBayesLogistic(30, 2, bigram_buckets=40, subword_buckets=50)
    model.fit(ids, subwords, labels, c=3.0)
    bags = model.bags(ids, subwords)
    columns, blocks = [], []
    for name, index in bags.items():
        size = model.tables[name].num_embeddings
        dense = torch.zeros(ids.shape[0], size, dtype=torch.float64)
        count = (index > 0).sum(1, keepdim=True).clamp(min=1).double()
        dense.scatter_(1, index, 1.0)
        dense[:, 0] = 0.0
        blocks.append(dense / count.sqrt())
        ratios = bag_ratios(index, labels, 2, size)[:, 0].double()
        columns.append(ratios)
    features = torch.cat(blocks, 1) * torch.cat(columns)  # [N, F], naive Bayes-scaled
    reference = sklearn.LogisticRegression(C=3.0, tol=1e-10, max_iter=10_000).fit(features.numpy(), labels.numpy())
    expected = torch.from_numpy(reference.decision_function(features.numpy()))
    with torch.no_grad():
        got = model(ids, torch.full((ids.shape[0],), 8), subwords).logits.squeeze(-1).double()
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)
    assert ((got > 0).long() == labels).float().mean() > 0.85


def test_multiclass_fit_and_no_training_by_gradient() -> None:
    ids, _, labels = _toy(seed=1)
    labels = (labels + (ids[:, 0] % 2) * 1).clamp(max=2)  # three classes
    model = NaiveBayesLogistic(30, 3, bigram_buckets=0, subword_buckets=0)
    assert list(model.tables) == ["words"] and not any(p.requires_grad for p in model.parameters())
    model.fit(ids, None, labels, c=10.0)
    logits = model(ids, torch.full((ids.shape[0],), 8)).logits
    assert logits.shape == (ids.shape[0], 3)
    assert (logits.argmax(-1) == labels).float().mean() > 0.7


def test_ensemble_mixes_the_linear_model_at_its_share(tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "two.txt", {"0": ["bad", "awful"], "1": ["good", "fine"]}, n=60)
    task = _task(data, ensemble=2, linear="nb-logreg", linear_weight=0.3)
    splits = task.setup_data()
    model = task.build_model().eval()
    assert isinstance(model, Ensemble) and model.linear is task.linear_model
    batch = task.collate(list(splits.train)[:6])
    with torch.no_grad():
        out = model(batch.ids, batch.lengths, batch.subwords)
        nets = [class_probabilities(m(batch.ids, batch.lengths, batch.subwords).logits) for m in model.members]
        linear = class_probabilities(model.linear(batch.ids, batch.lengths, batch.subwords).logits)
    expected = 0.3 * linear + 0.7 * (nets[0] + nets[1]) / 2
    torch.testing.assert_close(class_probabilities(out.logits), expected, rtol=1e-5, atol=1e-6)
    assert out.members is not None and out.members.shape[0] == 2  # only the networks train
    with pytest.raises(ConfigError, match="linear"):
        from_mapping(TextClassifierConfig, {"model": "pretrained", "linear": "nb-logreg"})


def test_linear_member_trains_saves_and_loads(tmp_path: Path) -> None:
    from vlattn.train import fit

    data = make_corpus(tmp_path / "two.txt", {"neg": ["bad", "awful"], "pos": ["good", "fine"]}, n=120)
    config = {"data": [str(data)], "split": "random", "embed_dim": 8, "hidden_size": 8, "linear": "nb-logreg"}
    trainer = {"epochs": 2, "quiet": True, "tensorboard": False, "threads": 1, "batch_size": 16, "lr": 5e-3}
    fit("text-classifier", config, trainer, tmp_path / "run")
    classifier = TextClassifier.load(tmp_path / "run")
    model = classifier.model
    assert isinstance(model, Ensemble) and len(model.members) == 1 and model.linear is not None
    scores = model.linear.tables["words"].weight
    bad, good = (classifier.task.tokenizer.word_index[w] for w in ("bad", "good"))  # type: ignore[union-attr]
    assert scores[good, 0] > 0 > scores[bad, 0]  # the fitted scores came back from the file
    prediction = classifier.classify(["this was really good"])[0]
    assert prediction.label == "pos" and prediction.attention is not None
    assert abs(sum(prediction.attention) - 1) < 1e-4


def test_features_unseen_in_training_leave_a_text_unchanged() -> None:
    """Unknown words and n-grams are out of the bag and of its norm, as with a fitted vectoriser."""
    ids, subwords, labels = _toy()
    model = NaiveBayesLogistic(40, 2, bigram_buckets=0, subword_buckets=60)  # ids 30-39, grams 51-60 unseen
    model.fit(ids, subwords, labels)
    text = torch.tensor([[3, 7, 12, 0, 0]])
    grams = torch.tensor([[[4, 5], [9, 2], [33, 1], [0, 0], [0, 0]]])
    padded_text = torch.tensor([[3, 7, 12, 35, 37]])  # two unknown words, their grams unknown too
    padded_grams = torch.tensor([[[4, 5], [9, 2], [33, 1], [55, 58], [52, 60]]])
    with torch.no_grad():
        plain = model(text, torch.tensor([3]), grams).logits
        extra = model(padded_text, torch.tensor([5]), padded_grams).logits
    assert model.known("words")[:30].any() and not model.known("words")[30:].any()
    torch.testing.assert_close(extra, plain)
