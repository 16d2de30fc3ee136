"""Text models: masking, the tutorial's Keras recipe, any registered attention, training and files."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from vlattn_text.config import TextClassifierConfig
from vlattn_text.models import RecurrentClassifier, TutorialAttention, TutorialLSTM
from vlattn_text.task import TextClassifierTask
from vlattn_text.transformer import TransformerClassifier

from vlattn.attention import lengths_to_mask
from vlattn.checkpoint import load_model
from vlattn.config import from_mapping

torch.set_num_threads(1)


def padded(ids: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = torch.zeros(len(ids), width, dtype=torch.long)
    for row, seq in enumerate(ids):
        batch[row, : len(seq)] = torch.tensor(seq)
    return batch, torch.tensor([len(s) for s in ids])


@pytest.mark.parametrize("attention", ["additive", "dot", "general", "multihead", "local-p", "tutorial-corrected"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_model_never_reads_padding(attention: str, cell: str) -> None:
    torch.manual_seed(0)
    model = RecurrentClassifier(
        20,
        3,
        embed_dim=8,
        hidden_size=6,
        cell=cell,
        attention=attention,
        query="mean" if attention == "local-p" else "learned",
    ).eval()
    seqs = [[3, 4, 5], [6, 7, 8, 9, 10, 11], []]
    ids, lengths = padded(seqs, 6)
    wide, _ = padded(seqs, 11)
    out, out_wide = model(ids, lengths), model(wide, lengths)
    assert out.logits.shape == (3, 3)
    torch.testing.assert_close(out.logits, out_wide.logits)  # extra padding changes nothing
    alone = model(*padded([seqs[0]], 3))
    torch.testing.assert_close(out.logits[:1], alone.logits, atol=1e-5, rtol=1e-5)
    weights = out.weights
    assert weights is not None and weights.shape == (3, 6)
    assert torch.all(weights[~lengths_to_mask(lengths, 6)] == 0)  # padding gets no weight
    if attention != "local-p":  # Luong's local-p scales by a Gaussian without renormalising
        torch.testing.assert_close(weights[:2].sum(-1), torch.ones(2))
    assert torch.all(weights[2] == 0) and torch.isfinite(out.logits).all()  # empty text: defined


def test_recurrent_model_without_attention_and_transformer() -> None:
    torch.manual_seed(0)
    seqs = [[3, 4], [5, 6, 7, 8]]
    plain = RecurrentClassifier(10, 2, embed_dim=8, hidden_size=4, attention="none").eval()
    assert plain(*padded(seqs, 4)).weights is None
    torch.testing.assert_close(plain(*padded(seqs, 4)).logits, plain(*padded(seqs, 9)).logits)
    transformer = TransformerClassifier(10, 4, embed_dim=16, ff_dim=32, heads=2, max_len=16).eval()
    out = transformer(*padded(seqs, 4))
    assert out.logits.shape == (2, 4) and out.weights is not None and out.weights.shape == (2, 4)
    torch.testing.assert_close(out.logits, transformer(*padded(seqs, 9)).logits, atol=1e-5, rtol=1e-5)
    assert out.weights[0, 2:].abs().sum() == 0


def test_tutorial_models_read_padding_like_keras() -> None:
    torch.manual_seed(0)
    base = TutorialLSTM(10, 2).eval()
    assert base.lstm.hidden_size == 100 and base.embedding.embedding_dim == 32
    assert base.classifier.out_features == 1  # Dense(1, sigmoid)
    assert torch.all(base.lstm.bias_ih_l0[100:200] == 1)  # Keras' unit_forget_bias
    seqs = [[3, 4, 5]]
    # Unmasked, like a Keras LSTM: more post-padding gives a different output.
    assert not torch.allclose(base(*padded(seqs, 3)).logits, base(*padded(seqs, 32)).logits)
    attn = TutorialAttention(10, 2, max_len=32).eval()
    out = attn(*padded(seqs, 32))
    assert out.weights is not None and out.weights.shape == (1, 32)
    assert out.weights[0, 3:].sum() > 0  # the tutorial's layer gives padding weight too


def make_corpus(path: Path, classes: dict[str, list[str]], n: int = 120, seed: int = 0) -> Path:
    """A UCI-style file where each class has its own cue words among shared filler words."""
    rng = random.Random(seed)
    filler = ["the", "a", "it", "was", "this", "very", "so", "and", "really", "quite"]
    lines = []
    for i in range(n):
        label = list(classes)[i % len(classes)]
        words = [*rng.sample(filler, 4), rng.choice(classes[label])]
        rng.shuffle(words)
        lines.append(" ".join(words) + "\t" + label)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_multiclass_training_through_the_trainer(tmp_path: Path) -> None:
    from vlattn.train import fit

    data = make_corpus(
        tmp_path / "three.txt", {"red": ["apple", "cherry"], "green": ["lime", "leaf"], "blue": ["sky", "sea"]}, n=150
    )
    config = {"data": [str(data)], "split": "random", "embed_dim": 16, "hidden_size": 16, "attention": "general"}
    fit(
        "text-classifier",
        config,
        {"epochs": 12, "quiet": True, "tensorboard": False, "threads": 1, "batch_size": 16, "lr": 5e-3},
        tmp_path / "run",
    )
    loaded = load_model(tmp_path / "run" / "best.safetensors")
    task = loaded.task
    assert isinstance(task, TextClassifierTask)
    assert task.labels == ["blue", "green", "red"]
    items = task.eval_data(None, None)
    batch = task.collate(items)
    with torch.no_grad():
        metrics = task.evaluate(loaded.model, [batch])
    assert metrics["accuracy"] >= 0.9, metrics
    with torch.no_grad():
        out = loaded.model(*padded([task.encode("the sky was very blue").ids], 5))
    # the cue word carries the most attention
    assert out.weights is not None and out.weights[0].argmax().item() == 1


def test_config_defaults_per_model_and_validation() -> None:
    tutorial = TextClassifierConfig(model="tutorial-attention").resolved()
    assert (tutorial.embed_dim, tutorial.hidden_size, tutorial.max_len, tutorial.oov) == (32, 100, 32, False)
    assert tutorial.embedding_l2 == pytest.approx(1e-3)
    ours = TextClassifierConfig(model="rnn", embed_dim=50).resolved()
    assert ours.embed_dim == 50 and ours.oov is True
    from vlattn.config import ConfigError

    with pytest.raises(ConfigError, match="fold must be"):
        from_mapping(TextClassifierConfig, {"folds": 5, "fold": 5})
    with pytest.raises(ConfigError, match="fixed max_len"):
        from_mapping(TextClassifierConfig, {"model": "tutorial-lstm", "max_len": 0})


def test_embedding_l2_is_added_to_the_loss(tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "two.txt", {"0": ["bad"], "1": ["good"]}, n=40)
    losses = []
    for l2 in (0.0, 0.5):
        torch.manual_seed(0)
        task = TextClassifierTask(
            from_mapping(TextClassifierConfig, {"data": [str(data)], "model": "tutorial-lstm", "embedding_l2": l2})
        )
        splits = task.setup_data()
        model = task.build_model().eval()
        batch = task.collate(list(splits.train)[:8])
        loss, _ = task.loss(model, batch)
        losses.append((loss, model.embedding.weight.pow(2).sum()))
    (plain, _), (penalised, squares) = losses
    torch.testing.assert_close(penalised - plain, 0.5 * squares)


def test_subword_packing_and_bag_sum_match_the_plain_computation() -> None:
    from vlattn_text.models import WordEmbedding
    from vlattn_text.task import pack_subwords

    grams = [[(3, 4), (5,), ()], [(7, 8, 9)]]
    packed = pack_subwords(grams, width=3)
    expected = torch.tensor([[[3, 4, 0], [5, 0, 0], [0, 0, 0]], [[7, 8, 9], [0, 0, 0], [0, 0, 0]]])
    assert torch.equal(packed, expected)
    assert pack_subwords([[], []], width=2).shape == (2, 2, 1)
    torch.manual_seed(0)
    embedding = WordEmbedding(6, 4, subword_buckets=10)
    ids = torch.tensor([[1, 2, 3], [4, 0, 0]])
    got = embedding(ids, packed)
    table = embedding.subwords.weight
    counts = (packed > 0).sum(-1, keepdim=True).clamp(min=1)
    plain = embedding.words(ids) + (table[packed] * (packed > 0).unsqueeze(-1)).sum(-2) / counts
    assert torch.allclose(got, plain, atol=1e-6)
