"""What a user could run instead of vlattn's text classifiers, on exactly vlattn's folds.

* ``tfidf``: TF-IDF of word 1-2-grams and character 2-5-grams, logistic regression (C = 10), the
  ten-line scikit-learn script;
* ``minilm-logreg``: the frozen all-MiniLM-L6-v2 sentence embedding as sentence-transformers
  computes it (mean of the token states, L2-normalised) and logistic regression (C = 10);
* :func:`sentence_transformers_finetune`: all-MiniLM-L6-v2 fine-tuned through sentence-transformers
  itself (``scripts/text_transfer.py``'s ``st-finetune``; needs that package).

Both see the same train / validation split of each fold as ``vlattn train text-classifier
--folds K --fold k --split-seed 0`` (vlattn's own splitter decides), so their accuracies sit beside
vlattn's in one table. Needs scikit-learn (and the ``pretrained`` extra for ``minilm-logreg``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

BASELINES = ("tfidf", "minilm-logreg")


@dataclass
class Fold:
    """One cross-validation fold: texts and labels of its training and validation parts."""

    train_texts: list[str]
    train_labels: list[str]
    val_texts: list[str]
    val_labels: list[str]


def folds(data: Sequence[str], k: int, seed: int = 0) -> list[Fold]:
    """vlattn's ``k`` folds of ``data`` (``--folds k --split-seed seed``)."""
    from vlattn_text.data import read_examples, split_examples

    examples = read_examples(list(data))
    out = []
    for fold in range(k):
        train, val = split_examples(examples, val_split=0.0, folds=k, fold=fold, seed=seed)
        out.append(
            Fold([e.text for e in train], [e.label for e in train], [e.text for e in val], [e.label for e in val])
        )
    return out


def tfidf_logreg(fold: Fold) -> float:
    """Validation accuracy of TF-IDF (word 1-2 + char 2-5 grams) + logistic regression, C = 10."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
    )
    model = make_pipeline(features, LogisticRegression(C=10.0, max_iter=2000))
    model.fit(fold.train_texts, fold.train_labels)
    return float(model.score(fold.val_texts, fold.val_labels))


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooled, L2-normalised) from vlattn's encoder."""

    def __init__(self, max_len: int = 128) -> None:
        from vlattn_text.pretrained.source import find_encoder
        from vlattn_text.pretrained.wordpiece import WordPieceTokenizer

        source = find_encoder("minilm")
        self.encoder = source.load_encoder()
        self.tokenizer = WordPieceTokenizer(source.tokenizer_json(), max_len)
        self.cache: dict[str, list[float]] = {}

    def __call__(self, texts: Sequence[str], batch_size: int = 64) -> list[list[float]]:
        import torch

        todo = sorted({t for t in texts if t not in self.cache}, key=len)
        for start in range(0, len(todo), batch_size):
            part = todo[start : start + batch_size]
            encoded = [self.tokenizer.encode(t).ids for t in part]
            width = max(len(e) for e in encoded)
            ids = torch.tensor([e + [0] * (width - len(e)) for e in encoded])
            mask = ids != 0
            with torch.inference_mode():
                hidden, _ = self.encoder(ids, mask)
                mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                mean = torch.nn.functional.normalize(mean, dim=-1)  # the model's own last module
            self.cache.update(zip(part, mean.tolist(), strict=True))
        return [self.cache[t] for t in texts]


def minilm_logreg(fold: Fold, embed: MiniLMEmbedder) -> float:
    """Validation accuracy of logistic regression (C = 10) on frozen MiniLM mean embeddings."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=10.0, max_iter=5000)
    model.fit(embed(fold.train_texts), fold.train_labels)
    return float(model.score(embed(fold.val_texts), fold.val_labels))


def sentence_transformers_finetune(fold: Fold, seed: int = 0, epochs: int = 3, lr: float = 5e-5) -> float:
    """all-MiniLM-L6-v2 through sentence-transformers (its mean pooling and normalisation), a linear
    layer on the sentence embedding, everything trained by AdamW (lr 5e-5, linear decay, batch 32,
    at most 64 tokens, 3 epochs) on cross-entropy; accuracy on the fold's validation part."""
    import torch
    from vlattn_text.pretrained.source import find_encoder

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        message = "the st-finetune baseline needs sentence-transformers (pip install sentence-transformers)"
        raise SystemExit(message) from None

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = SentenceTransformer(str(find_encoder("minilm").folder), device="cpu")
    model.max_seq_length = 64
    classes = sorted(set(fold.train_labels))
    dimension = getattr(model, "get_embedding_dimension", model.get_sentence_embedding_dimension)()
    head = torch.nn.Linear(dimension or 384, len(classes))
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    order = list(range(len(fold.train_texts)))
    steps = epochs * ((len(order) + 31) // 32)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / steps))
    labels = torch.tensor([classes.index(y) for y in fold.train_labels])

    def embed(texts: list[str]) -> torch.Tensor:
        features = getattr(model, "preprocess", model.tokenize)(texts)  # tokenize before 6.x
        return model(features)["sentence_embedding"]

    model.train()
    for _ in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            loss = torch.nn.functional.cross_entropy(head(embed([fold.train_texts[i] for i in batch])), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(fold.val_texts), 64):
            texts = fold.val_texts[start : start + 64]
            predicted = head(embed(texts)).argmax(-1).tolist()
            truth = fold.val_labels[start : start + 64]
            correct += sum(classes[p] == y for p, y in zip(predicted, truth, strict=True))
    return correct / len(fold.val_texts)


def run_baseline(name: str, data: Sequence[str], k: int) -> tuple[list[float], float]:
    """``(accuracy per fold, seconds per fold)`` of baseline ``name`` on vlattn's ``k`` folds."""
    splits = folds(data, k)
    score: Callable[[Fold], float]
    if name == "tfidf":
        score = tfidf_logreg
    elif name == "minilm-logreg":
        embed = MiniLMEmbedder()
        embed([t for f in splits[:1] for t in f.train_texts + f.val_texts])  # every text, once
        score = lambda fold: minilm_logreg(fold, embed)  # noqa: E731
    else:
        raise SystemExit(f"unknown baseline {name!r} (known: {', '.join(BASELINES)})")
    start = time.perf_counter()
    accuracies = [score(fold) for fold in splits]
    return accuracies, (time.perf_counter() - start) / k
