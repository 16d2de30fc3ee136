"""A bag-of-n-grams sentence classifier whose n-grams are pooled by attention (``--model ngram``).

The model sees the features a TF-IDF + logistic-regression baseline sees, as learned vectors:
each word (its vector plus the mean of its hashed character n-gram vectors,
:mod:`vlattn_text.subwords`) and each pair of neighbouring words (a hashed bigram vector) is one
*item*; a registered attention mechanism pools the ``T + (T - 1)`` items of a text, optionally
mixed with their plain mean, and a linear layer classifies the pooled vector.

A *lexical* score per n-gram adds a linear term to the logits: for each table (words, bigrams,
character n-grams) the sum of the scores of the n-grams present over the square root of their count,
i.e. a linear model of the L2-normalised binary bags (:meth:`NgramClassifier.lexical_logits`). Initialised
from the training split's naive Bayes log-count ratios (Wang & Manning, "Baselines and Bigrams",
ACL 2012: :func:`naive_bayes_ratios`), it starts the model at an NB classifier that gradient
descent then refines, which is what lets a bag of n-grams beat logistic regression on small data.

Token weights for display: the weight of token ``t`` is the sum of the weights of the items that
cover it (its word item and the bigrams ``(t-1, t)`` and ``(t, t+1)``), renormalised to sum to 1
(:func:`token_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from vlattn.attention import lengths_to_mask
from vlattn_text.models import ClassifierOutput, QueryKind, add_pooling_head, output_size

BIGRAM_MULTIPLIER = 1_000_003  # a prime larger than any vocabulary: (a, b) -> a * M + b is unique
# the mixed hash works modulo the Mersenne prime 2^31 - 1, so that products stay below 2^63
HASH_PRIME = 2_147_483_647
HASH_MULTIPLIERS = (1_500_450_271, 1_190_494_759)
BigramHash = Literal["mixed", "linear"]
Lexical = Literal["nb", "learned", "none"]


def bigram_ids(ids: Tensor, buckets: int, scheme: BigramHash = "mixed") -> Tensor:
    """Hashed bigram buckets of neighbouring words: ``ids [B, T] -> [B, max(T - 1, 0)]``.

    ``mixed``: bucket ``1 + mix(a * M + b) mod buckets`` for the pair ``(a, b)``, where ``mix``
    alternates xor-shifts with products by large primes modulo ``P = 2^31 - 1`` (:func:`mix_ids`),
    so pairs of nearby ids land in unrelated buckets. ``linear``
    (models saved before the mixed hash): ``1 + (a * M + b) mod buckets``, ``M = 1,000,003``; as
    ``M mod buckets`` is 3 for the usual bucket counts, ``(a, b)`` and ``(a + 1, b - 3)`` share a
    bucket. 0 where either word is padding.
    """
    if ids.shape[1] < 2 or buckets <= 0:
        return ids.new_zeros(ids.shape[0], max(ids.shape[1] - 1, 0))
    left, right = ids[:, :-1], ids[:, 1:]
    if scheme == "linear":
        bucket = 1 + (left * BIGRAM_MULTIPLIER + right) % buckets
    else:
        bucket = 1 + mix_ids(left * BIGRAM_MULTIPLIER + right) % buckets
    return bucket.masked_fill((left == 0) | (right == 0), 0)


def mix_ids(keys: Tensor) -> Tensor:
    """A non-linear integer hash of non-negative int64 ``keys`` (below ``2^62``) into ``[0, 2^31 - 1)``."""
    x = keys % HASH_PRIME
    for multiplier, shift in zip(HASH_MULTIPLIERS, (15, 13), strict=True):
        x = x ^ (x >> shift)
        x = (x * multiplier) % HASH_PRIME
    return x ^ (x >> 16)


def token_weights(item_weights: Tensor, length: int) -> Tensor:
    """Per-token weights from the weights of the word and bigram items.

    ``item_weights [B, T + T - 1]`` (words first, then the bigrams ``(t, t+1)``) -> ``[B, T]``:
    token ``t`` sums its word's weight and those of the bigrams covering it, renormalised to 1
    (all zero for an empty text).
    """
    words, pairs = item_weights[:, :length], item_weights[:, length:]
    tokens = words.clone()
    if pairs.shape[1]:
        tokens[:, :-1] += pairs
        tokens[:, 1:] += pairs
    return tokens / tokens.sum(-1, keepdim=True).clamp(min=1e-12)


@dataclass
class NgramPriors:
    """Initial lexical scores ``[N, C]`` of the three n-gram tables (rows as the model's tables)."""

    words: Tensor
    bigrams: Tensor
    subwords: Tensor | None


def unique_rows(index: Tensor) -> Tensor:
    """``index [B, M]`` with each row's repeated ids set to 0 (padding): a binary bag per row."""
    if index.shape[1] < 2:
        return index
    ordered = index.sort(dim=1).values
    repeated = torch.zeros_like(ordered, dtype=torch.bool)
    repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    return ordered.masked_fill(repeated, 0)


def ngram_bags(
    ids: Tensor, subwords: Tensor | None, bigram_buckets: int, scheme: BigramHash = "mixed"
) -> dict[str, Tensor]:
    """A batch's n-gram ids per table, each ``[B, M]`` (0 = padding, repeats kept): ``words``
    (``ids [B, T]``), ``bigrams`` (:func:`bigram_ids`, when ``bigram_buckets > 0``) and ``subwords``
    (the words' character n-grams ``[B, T, K]``, when given)."""
    bags = {"words": ids}
    if bigram_buckets > 0:
        bags["bigrams"] = bigram_ids(ids, bigram_buckets, scheme)
    if subwords is not None and subwords.shape[-1] > 0:
        bags["subwords"] = subwords.reshape(subwords.shape[0], -1)
    return bags


def bag_logits(bags: dict[str, Tensor], scores: dict[str, Tensor]) -> Tensor:
    """Per table, the sum of the scores ``[rows, C]`` of the ids in its bag ``[B, M]`` divided by the
    square root of their count (a linear model of the L2-normalised bags), summed over tables: ``[B, C]``."""
    total: Tensor | None = None
    for name, index in bags.items():
        summed = nn.functional.embedding_bag(index, scores[name], mode="sum", padding_idx=0)
        part = summed / (index > 0).sum(-1, keepdim=True).clamp(min=1).sqrt()
        total = part if total is None else total + part
    assert total is not None, "no bags"
    return total


def bag_ratios(bag: Tensor, labels: Tensor, classes: int, size: int) -> Tensor:
    """Naive Bayes log-count ratios ``[size, C]`` of one table's features (:func:`naive_bayes_ratios`
    of the number of texts of each class holding each id of ``bag [N, M]``, once per text; ``labels
    [N]``); row 0 (padding) is 0."""
    bag = unique_rows(bag)
    counts = torch.zeros(classes, size, dtype=torch.float64)
    rows = labels[:, None].expand_as(bag)
    ones = torch.ones(bag.numel(), dtype=torch.float64)
    counts.index_put_((rows.reshape(-1), bag.reshape(-1)), ones, accumulate=True)
    ratios = naive_bayes_ratios(counts[:, 1:])
    return torch.cat([ratios.new_zeros(1, ratios.shape[1]), ratios])


def naive_bayes_ratios(counts: Tensor, alpha: float = 1.0) -> Tensor:
    """Naive Bayes log-count ratios of features: ``counts [K, N]`` (texts of class ``k`` holding
    feature ``n``) -> ``[N, C]``: ``log(p / |p|) - log(q / |q|)`` with ``p = alpha + counts of the
    class``, ``q = alpha + counts of the others``; for two classes ``C = 1`` (class 1 against 0)."""
    counts = counts.double() + alpha
    if counts.shape[0] == 2:
        pos, neg = counts[1], counts[0]
        return (torch.log(pos / pos.sum()) - torch.log(neg / neg.sum())).float().unsqueeze(-1)
    rest = counts.sum(0, keepdim=True) - counts + alpha
    ratio = torch.log(counts / counts.sum(-1, keepdim=True)) - torch.log(rest / rest.sum(-1, keepdim=True))
    return ratio.float().T.contiguous()


class NgramClassifier(nn.Module):
    """Word, character n-gram and word-bigram vectors pooled by attention, plus a lexical score.

    Called as ``model(ids [B, T], lengths [B], subwords [B, T, K] or None)`` ->
    :class:`ClassifierOutput` with ``weights [B, T]`` (:func:`token_weights`).

    Args:
        vocab_size: word rows; index 0 is padding.
        num_classes: classes.
        embed_dim: n-gram vector size ``D``.
        bigram_buckets: hash buckets of word bigrams (0 = no bigrams).
        subword_buckets: hash buckets of character n-grams (0 = none).
        attention: pooling mechanism name, or ``"none"`` (the masked mean of the items).
        attention_options: its keyword options.
        query: ``learned`` vector or the masked ``mean`` of the items (``last`` means ``mean``).
        mean_mix: add the items' masked mean to the attention context.
        dropout: dropout on the pooled vector.
        embed_dropout: dropout on the item vectors.
        item_dropout: in training, drop this fraction of the items (words and bigrams) entirely.
        lexical: per-n-gram logit scores (``nb``: to be set by :meth:`init_lexical`; ``learned``:
            from zero), or ``none``.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        embed_dim: int = 64,
        bigram_buckets: int = 20000,
        subword_buckets: int = 0,
        attention: str = "additive",
        attention_options: dict[str, Any] | None = None,
        query: QueryKind = "learned",
        mean_mix: bool = True,
        dropout: float = 0.5,
        embed_dropout: float = 0.2,
        item_dropout: float = 0.1,
        lexical: Lexical = "nb",
    ) -> None:
        super().__init__()
        self.bigram_buckets, self.mean_mix, self.item_dropout = bigram_buckets, mean_mix, item_dropout
        # saved with the weights; files from before the mixed bigram hash lack it and load as linear
        self.register_buffer("mixed_bigram_hash", torch.ones((), dtype=torch.bool))
        self.words = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.bigrams = nn.Embedding(bigram_buckets + 1, embed_dim, padding_idx=0)
        self.subwords = nn.Embedding(subword_buckets + 1, embed_dim, padding_idx=0) if subword_buckets else None
        for table in (self.words, self.bigrams, self.subwords):
            if table is not None:
                nn.init.normal_(table.weight, std=embed_dim**-0.5)
                with torch.no_grad():
                    table.weight[0] = 0.0
        self.embed_dropout = nn.Dropout(embed_dropout)
        out = output_size(num_classes)
        self.lexical: nn.ModuleDict | None = None
        if lexical != "none":
            self.lexical = nn.ModuleDict(
                {
                    "words": nn.Embedding(vocab_size, out, padding_idx=0),
                    "bigrams": nn.Embedding(bigram_buckets + 1, out, padding_idx=0),
                }
            )
            if subword_buckets:
                self.lexical["subwords"] = nn.Embedding(subword_buckets + 1, out, padding_idx=0)
            for table in self.lexical.values():
                nn.init.zeros_(table.weight)
        add_pooling_head(
            self,
            embed_dim,
            num_classes,
            attention=attention,
            attention_options=attention_options,
            query="learned" if query == "learned" else "mean",
            dropout=dropout,
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "mixed_bigram_hash"
        if key not in state_dict:  # a model file from before the mixed hash: keep its buckets
            state_dict[key] = torch.zeros((), dtype=torch.bool)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def bigram_hash(self) -> BigramHash:
        """The scheme of :func:`bigram_ids` this model's bigram rows were trained with."""
        return "mixed" if bool(self.mixed_bigram_hash) else "linear"

    def init_lexical(self, priors: NgramPriors, scale: float = 1.0) -> None:
        """Start the lexical scores at ``scale * priors`` (naive Bayes ratios of the training split)."""
        if self.lexical is None:
            return
        with torch.no_grad():
            self.lexical["words"].weight.copy_(scale * priors.words)
            self.lexical["bigrams"].weight.copy_(scale * priors.bigrams)
            if "subwords" in self.lexical and priors.subwords is not None:
                self.lexical["subwords"].weight.copy_(scale * priors.subwords)
            for table in self.lexical.values():
                table.weight[0] = 0.0

    @staticmethod
    def _char_mean(table: nn.Embedding, subwords: Tensor) -> Tensor:
        """Mean of each word's character n-gram rows: ``[B, T, K] -> [B, T, E]``."""
        flat = subwords.reshape(-1, subwords.shape[-1])
        summed = nn.functional.embedding_bag(flat, table.weight, mode="sum", padding_idx=0)
        counts = (subwords > 0).sum(-1, keepdim=True).clamp(min=1)
        return summed.view(*subwords.shape[:-1], -1) / counts

    def items(
        self, ids: Tensor, lengths: Tensor, subwords: Tensor | None, pairs: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(vectors [B, N, D], mask [B, N])`` of the ``N = 2T - 1``
        items (``N = T`` when ``T < 2``): the words, then the bigrams ``(t, t+1)`` (``pairs``, the
        :func:`bigram_ids` of ``ids``, computed here when not given)."""
        if pairs is None:
            pairs = bigram_ids(ids, self.bigram_buckets, self.bigram_hash)
        word_mask = lengths_to_mask(lengths, ids.shape[1]) & (ids > 0)
        mask = torch.cat([word_mask, pairs > 0], dim=1)
        use_chars = self.subwords is not None and subwords is not None and subwords.shape[-1] > 0
        words = self.words(ids)
        if use_chars:
            words = words + self._char_mean(self.subwords, subwords)  # type: ignore[arg-type]
        vectors = torch.cat([words, self.bigrams(pairs)], dim=1)
        return vectors, mask

    def lexical_logits(self, ids: Tensor, pairs: Tensor, subwords: Tensor | None) -> Tensor:
        """The lexical term ``[B, C]``: per table, the sum of the scores of the n-grams present
        divided by the square root of their count (the L2-normalised binary bag, as TF-IDF's rows)."""
        assert self.lexical is not None
        bags = {"words": ids.reshape(ids.shape[0], -1), "bigrams": pairs}
        if subwords is not None and "subwords" in self.lexical:
            bags["subwords"] = subwords.reshape(subwords.shape[0], -1)
        return bag_logits(bags, {name: self.lexical[name].weight for name in bags})

    def forward(self, ids: Tensor, lengths: Tensor, subwords: Tensor | None = None) -> ClassifierOutput:
        pairs = bigram_ids(ids, self.bigram_buckets, self.bigram_hash)
        vectors, mask = self.items(ids, lengths, subwords, pairs)
        if self.training and self.item_dropout > 0:
            kept = mask & (torch.rand(mask.shape, device=mask.device) >= self.item_dropout)
            mask = torch.where(kept.any(1, keepdim=True), kept, mask)  # never drop every item of a text
        vectors = self.embed_dropout(vectors).masked_fill(~mask.unsqueeze(-1), 0.0)
        counts = mask.sum(1, keepdim=True)
        mean = vectors.sum(1) / counts.clamp(min=1)
        if self.attention_name == "none":
            weights = mask.float() / counts.clamp(min=1)
            pooled = mean
        else:
            query = self.query.expand(ids.shape[0], -1) if self.query_kind == "learned" else mean
            pooled, weights = self.attention(query, vectors, mask=mask)
            if weights.dim() == 3:  # several heads or query steps: average them
                weights = weights.mean(1)
            weights = weights.masked_fill(~mask, 0.0)
            if self.mean_mix:
                pooled = pooled + mean
        logits = self.classifier(self.dropout(pooled))
        if self.lexical is not None:
            logits = logits + self.lexical_logits(ids, pairs, subwords)
        empty = counts == 0
        return ClassifierOutput(logits, token_weights(weights, ids.shape[1]).masked_fill(empty, 0.0))
