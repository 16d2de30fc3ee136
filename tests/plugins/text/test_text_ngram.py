"""The n-gram attention model: bigram hashing, token weights, masking, NB init, training and files."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from test_text_models import padded
from vlattn_text.config import TextClassifierConfig
from vlattn_text.ngram import NgramClassifier, bigram_ids, naive_bayes_ratios, token_weights
from vlattn_text.predict import TextClassifier
from vlattn_text.task import TextClassifierTask, pack_subwords

from vlattn.checkpoint import load_model
from vlattn.config import from_mapping

torch.set_num_threads(1)


def test_bigram_ids_skip_padding_and_are_stable() -> None:
    ids = torch.tensor([[3, 4, 5, 0], [6, 0, 0, 0]])
    pairs = bigram_ids(ids, 100)
    assert pairs.shape == (2, 3)
    assert torch.all(pairs[0, :2] > 0) and pairs[0, 2] == 0 and torch.all(pairs[1] == 0)
    assert torch.equal(pairs[0, :1], bigram_ids(torch.tensor([[3, 4]]), 100)[0])
    assert bigram_ids(torch.tensor([[7]]), 100).shape == (1, 0)


def test_token_weights_sum_the_covering_items() -> None:
    # T = 3: words w0 w1 w2, then bigrams (0,1) (1,2)
    items = torch.tensor([[0.1, 0.2, 0.1, 0.4, 0.2]])
    got = token_weights(items, 3)
    expected = torch.tensor([[0.5, 0.8, 0.3]]) / 1.6
    torch.testing.assert_close(got, expected)


def test_naive_bayes_ratios_sign_and_shape() -> None:
    counts = torch.tensor([[10.0, 0.0, 5.0], [0.0, 10.0, 5.0]])  # class 0, class 1 x 3 features
    ratios = naive_bayes_ratios(counts)
    assert ratios.shape == (3, 1)
    assert ratios[0, 0] < 0 < ratios[1, 0] and abs(float(ratios[2, 0])) < 1e-6
    assert naive_bayes_ratios(torch.ones(3, 4)).shape == (4, 3)  # one-vs-rest per class


@pytest.mark.parametrize("attention", ["additive", "dot", "none"])
def test_ngram_model_never_reads_padding(attention: str) -> None:
    torch.manual_seed(0)
    model = NgramClassifier(20, 3, embed_dim=8, bigram_buckets=50, subword_buckets=30, attention=attention).eval()
    seqs = [[3, 4, 5], [6, 7, 8, 9, 10, 11], []]
    grams = [[(1 + w % 30, 1 + (w * 7) % 30) for w in seq] for seq in seqs]
    ids, lengths = padded(seqs, 6)
    wide, _ = padded(seqs, 9)
    out = model(ids, lengths, pack_subwords(grams, 6))
    out_wide = model(wide, lengths, pack_subwords(grams, 9))
    assert out.logits.shape == (3, 3)
    torch.testing.assert_close(out.logits, out_wide.logits, atol=1e-5, rtol=1e-5)
    alone = model(*padded([seqs[0]], 3), pack_subwords(grams[:1], 3))
    torch.testing.assert_close(out.logits[:1], alone.logits, atol=1e-5, rtol=1e-5)
    assert out.weights is not None and out.weights.shape == (3, 6)
    assert torch.all(out.weights[0, 3:] == 0) and torch.all(out.weights[2] == 0)
    torch.testing.assert_close(out.weights[:2].sum(-1), torch.ones(2))
    assert torch.isfinite(out.logits).all()


def sentiment_corpus(path: Path, n: int = 120) -> Path:
    rng = random.Random(0)
    filler = ["the", "a", "it", "was", "this", "very", "so", "and", "phone", "food"]
    cues = {"0": ["bad", "awful", "broken"], "1": ["good", "great", "lovely"]}
    lines = []
    for i in range(n):
        label = str(i % 2)
        words = [*rng.sample(filler, 4), rng.choice(cues[label])]
        rng.shuffle(words)
        lines.append(" ".join(words) + "\t" + label)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_naive_bayes_init_already_separates_the_cues(tmp_path: Path) -> None:
    data = sentiment_corpus(tmp_path / "two.txt")
    task = TextClassifierTask(from_mapping(TextClassifierConfig, {"data": [str(data)], "model": "ngram"}))
    task.setup_data()
    assert task.ngram_priors is not None and task.ngram_priors.subwords is not None
    torch.manual_seed(0)
    model = task.build_model().eval()
    with torch.no_grad():
        good = model(*padded([task.encode("it was great").ids], 3)).logits
        bad = model(*padded([task.encode("it was awful").ids], 3)).logits
    assert float(good) > float(bad)
    learned = TextClassifierConfig(model="ngram", lexical="learned").resolved()
    assert learned.subword_buckets == 20000 and learned.oov is True


def test_ngram_learns_through_the_trainer_and_round_trips(tmp_path: Path) -> None:
    from vlattn.train import fit

    data = sentiment_corpus(tmp_path / "two.txt")
    config = {"data": [str(data)], "split": "random", "model": "ngram", "subword_buckets": 500, "bigram_buckets": 500}
    trainer = {"epochs": 4, "quiet": True, "tensorboard": False, "threads": 1, "batch_size": 16, "lr": 1e-2}
    fit("text-classifier", config, trainer, tmp_path / "run")
    loaded = load_model(tmp_path / "run" / "last.safetensors")
    task = loaded.task
    assert isinstance(task, TextClassifierTask)
    with torch.no_grad():
        metrics = task.evaluate(loaded.model, [task.collate(task.eval_data(None, None))])
    assert metrics["accuracy"] >= 0.9, metrics
    again = load_model(tmp_path / "run" / "last.safetensors")
    batch = task.collate(task.eval_data(None, None))
    with torch.no_grad():
        first = loaded.model(batch.ids, batch.lengths, batch.subwords)
        second = again.model(batch.ids, batch.lengths, batch.subwords)
    torch.testing.assert_close(first.logits, second.logits)
    prediction = TextClassifier.load(tmp_path / "run" / "last.safetensors").classify(["the phone was great"])[0]
    assert prediction.label == "positive" and prediction.attention is not None and len(prediction.attention) == 4
    assert sum(prediction.attention) == pytest.approx(1.0, abs=1e-4)


def test_mixed_bigram_hash_spreads_neighbouring_ids() -> None:
    """The linear hash ``a * 1,000,003 + b`` puts (a, b) and (a + 1, b - 3) in one bucket for the
    usual bucket counts; the mixed hash fills about as many buckets as random ones would."""
    left = torch.arange(1, 151).repeat_interleave(100)
    right = torch.arange(1, 101).repeat(150)
    pairs = torch.stack([left, right], dim=1)  # 15,000 distinct pairs of frequent (small) ids
    buckets = 20000
    linear = bigram_ids(pairs, buckets, "linear")[:, 0]
    mixed = bigram_ids(pairs, buckets)[:, 0]
    assert bigram_ids(torch.tensor([[10, 7]]), buckets, "linear") == bigram_ids(
        torch.tensor([[11, 4]]), buckets, "linear"
    )
    random_fill = buckets * (1 - math.exp(-len(pairs) / buckets))  # expected distinct buckets of random hashing
    assert linear.unique().numel() < 0.1 * random_fill
    assert abs(mixed.unique().numel() - random_fill) < 0.02 * random_fill
    assert torch.all((mixed >= 1) & (mixed <= buckets))


def test_model_files_from_before_the_mixed_hash_keep_their_buckets() -> None:
    torch.manual_seed(0)
    model = NgramClassifier(20, 2, embed_dim=4, bigram_buckets=50, lexical="learned").eval()
    with torch.no_grad():
        for table in (model.bigrams, model.lexical["bigrams"]):  # type: ignore[index]
            table.weight.normal_()
    ids, lengths = padded([[3, 4, 5, 6], [7, 8]], 4)
    old_state = {k: v for k, v in model.state_dict().items() if k != "mixed_bigram_hash"}
    old = NgramClassifier(20, 2, embed_dim=4, bigram_buckets=50, lexical="learned").eval()
    old.load_state_dict(old_state)
    assert model.bigram_hash == "mixed" and old.bigram_hash == "linear"
    with torch.no_grad():
        new_logits, old_logits = model(ids, lengths).logits, old(ids, lengths).logits
        model.mixed_bigram_hash.fill_(False)
        torch.testing.assert_close(model(ids, lengths).logits, old_logits)
    assert not torch.allclose(new_logits, old_logits)
