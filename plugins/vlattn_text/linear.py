"""A naive Bayes logistic regression over a text's n-gram bags, fitted to convergence (``--linear nb-logreg``).

NBSVM (Wang & Manning, "Baselines and Bigrams", ACL 2012) with the logistic loss. A text's features
are three binary bags, each L2-normalised: its words, its word bigrams (hashed into
``bigram_buckets``) and its words' character n-grams (the task's hashed ``subword_buckets``). Each
feature is scaled by its naive Bayes log-count ratio on the training split
(:func:`vlattn_text.ngram.naive_bayes_ratios`), and the weights ``w`` minimise

    C * sum_i loss(x_i, y_i) + 1/2 ||w||^2

(scikit-learn's ``LogisticRegression`` convention; ``C`` is ``--linear-c``) by full-batch L-BFGS,
once, before the networks train. :class:`NaiveBayesLogistic` stores the products ``ratio * w`` as
per-feature logit scores, so that at inference the model is three embedding-bag sums.

In a classifier it is one more member of :class:`~vlattn_text.ensemble.Ensemble`: its
probabilities are mixed with the networks' (``--linear-weight``). It has no attention; the token
weights a prediction shows are the networks'.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlattn_text.models import ClassifierOutput, output_size
from vlattn_text.ngram import bag_logits, bag_ratios, ngram_bags, unique_rows


class NaiveBayesLogistic(nn.Module):
    """Logit scores per word, word bigram and character n-gram; called like the other classifiers.

    ``model(ids [B, T], lengths [B], subwords [B, T, K] or None)`` -> :class:`ClassifierOutput`
    with ``logits [B, C]`` (``C = 1`` for two classes) and no weights. Its parameters never train
    by gradient (``requires_grad`` is off); :meth:`fit` sets them, and which features it saw:
    a text's bags and their L2 norms count only those.

    Args:
        vocab_size: word rows; index 0 is padding.
        num_classes: classes.
        bigram_buckets: hash buckets of word bigrams (0 = no bigram bag).
        subword_buckets: hash buckets of character n-grams (0 = no character bag).
    """

    def __init__(self, vocab_size: int, num_classes: int, bigram_buckets: int, subword_buckets: int) -> None:
        super().__init__()
        out = output_size(num_classes)
        sizes = {"words": vocab_size, "bigrams": bigram_buckets + 1, "subwords": subword_buckets + 1}
        self.bigram_buckets = bigram_buckets
        self.tables = nn.ModuleDict(
            {name: nn.Embedding(size, out, padding_idx=0) for name, size in sizes.items() if size > 1}
        )
        for table in self.tables.values():
            nn.init.zeros_(table.weight)
        # the features seen in training, per table: the others are left out of a text's bag (and of
        # its L2 norm), as a vectoriser fitted on the training split leaves out unknown n-grams
        for name, table in self.tables.items():
            self.register_buffer(f"known_{name}", torch.zeros(table.num_embeddings, dtype=torch.bool))
        self.bias = nn.Parameter(torch.zeros(out))
        self.requires_grad_(False)

    def known(self, table: str) -> Tensor:
        """``[rows]`` True for the features of ``table`` seen in training."""
        known: Tensor = getattr(self, f"known_{table}")
        return known

    def bags(self, ids: Tensor, subwords: Tensor | None, known_only: bool = True) -> dict[str, Tensor]:
        """Each table's binary bag of ids ``[B, M]`` (0 = padding) for a batch of texts; with
        ``known_only``, features not seen in training are dropped (set to 0)."""
        buckets = self.bigram_buckets if "bigrams" in self.tables else 0
        bags = ngram_bags(ids, subwords if "subwords" in self.tables else None, buckets)
        if known_only:
            bags = {name: index * self.known(name)[index] for name, index in bags.items()}
        return {name: unique_rows(index) for name, index in bags.items()}

    def forward(self, ids: Tensor, lengths: Tensor, subwords: Tensor | None = None) -> ClassifierOutput:
        scores = {name: table.weight for name, table in self.tables.items()}
        return ClassifierOutput(bag_logits(self.bags(ids, subwords), scores) + self.bias, None)

    def fit(self, ids: Tensor, subwords: Tensor | None, labels: Tensor, c: float = 10.0, max_iter: int = 500) -> int:
        """Fit to the texts ``ids [N, T]`` (``subwords [N, T, K]``) with class ``labels [N]``.

        Minimises ``c * sum of the log losses + 1/2 ||w||^2`` over the weights ``w`` of the naive
        Bayes-scaled features (the bias is not penalised) by L-BFGS; returns the iterations run.
        """
        bags = self.bags(ids, subwords, known_only=False)
        for name, index in bags.items():
            known = self.known(name)
            known.zero_()
            known[index.reshape(-1)] = True
            known[0] = False
        binary = self.bias.shape[0] == 1
        classes = 2 if binary else self.bias.shape[0]
        ratios = {n: bag_ratios(b, labels, classes, self.tables[n].num_embeddings).double() for n, b in bags.items()}
        # float64: in float32 the line search stops once the loss (thousands) changes below its precision
        weights = {name: torch.zeros_like(r, requires_grad=True) for name, r in ratios.items()}
        bias = torch.zeros(self.bias.shape, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [*weights.values(), bias],
            lr=1.0,
            max_iter=max_iter,
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )

        def objective() -> Tensor:
            optimizer.zero_grad()
            logits = bag_logits(bags, {n: ratios[n] * w for n, w in weights.items()}) + bias
            if binary:
                data = nn.functional.binary_cross_entropy_with_logits(
                    logits.squeeze(-1), labels.to(logits.dtype), reduction="sum"
                )
            else:
                data = nn.functional.cross_entropy(logits, labels, reduction="sum")
            loss = c * data + 0.5 * sum(w.pow(2).sum() for w in weights.values())
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(objective)
        with torch.no_grad():
            for name, table in self.tables.items():
                table.weight.zero_()
                if name in weights:
                    table.weight.copy_(ratios[name] * weights[name])
                table.weight[0] = 0.0
            self.bias.copy_(bias)
        return int(optimizer.state[next(iter(weights.values()))].get("n_iter", 0))
