"""The ``text-classifier`` task: labelled sentences in, a (multi-class) classifier out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlattn.errors import VlattnError
from vlattn.task import DataSplits, Task
from vlattn_text.config import TUTORIAL_MODELS, TextClassifierConfig
from vlattn_text.data import Example, TextDataError, label_order, read_examples, split_examples
from vlattn_text.subwords import subword_ids
from vlattn_text.tokenizer import Encoded, Tokenizer, truncate

if TYPE_CHECKING:
    from vlattn_text.linear import NaiveBayesLogistic
    from vlattn_text.ngram import NgramPriors
    from vlattn_text.pretrained.wordpiece import WordPieceTokenizer


@dataclass
class TextBatch:
    """A padded batch: ``ids [B, T]`` (0 = padding), ``lengths [B]``, ``labels [B]`` (class indices),
    and ``subwords [B, T, K]`` hashed character n-grams (``None`` when the model uses none)."""

    ids: Tensor
    lengths: Tensor
    labels: Tensor
    subwords: Tensor | None = None


@dataclass
class Item:
    """One encoded text: word ``ids``, per-word n-gram buckets ``grams`` (empty if unused), ``label``."""

    ids: list[int]
    grams: list[tuple[int, ...]]
    label: int


class TextClassifierTask(Task):
    """Sentence classification (binary or multi-class) with the models of :mod:`vlattn_text.models`."""

    name: ClassVar[str] = "text-classifier"
    Config = TextClassifierConfig
    trainer_defaults: ClassVar[Mapping[str, Any]] = {"epochs": 10, "batch_size": 32, "lr": 1e-3}
    best_metric: ClassVar[tuple[str, Literal["max", "min"]]] = ("accuracy", "max")

    def __init__(self, config: TextClassifierConfig) -> None:
        super().__init__(config)
        self.settings = config.resolved()
        self.tokenizer: Tokenizer | WordPieceTokenizer | None = None
        self.labels: list[str] = list(config.labels)
        self.encoder_info: dict[str, Any] = {}  # pretrained model: the encoder's config and fingerprint
        self.training_run = False  # set by setup_data: the frozen encoder part may then cache features
        self.ngram_priors: NgramPriors | None = None  # ngram model, set by setup_data: its lexical init
        self.linear_model: NaiveBayesLogistic | None = None  # --linear, fitted by setup_data

    # -- data ------------------------------------------------------------------------------------
    def _read(self, paths: Sequence[str]) -> list[Example]:
        s = self.settings
        return read_examples(paths, fmt=s.format, text_column=s.text_column, label_column=s.label_column)

    def _split(self) -> tuple[list[Example], list[Example], list[Example]]:
        """``(all examples, train, validation)`` as the config asks."""
        s = self.settings
        if not s.data:
            raise TextDataError("no training data: pass --data FILE_OR_FOLDER (comma-separated for several)")
        examples = self._read(s.data)
        if s.val_data:
            return examples, examples, self._read(s.val_data)
        train, val = split_examples(
            examples, val_split=s.val_split, split=s.split, folds=s.folds, fold=s.fold, seed=s.split_seed
        )
        return examples, train, val

    def setup_data(self) -> DataSplits:
        """Read ``data`` (and ``val_data``), split, fit the tokenizer and the label list."""
        s = self.settings
        examples, train, val = self._split()
        if not train:
            raise TextDataError("the training split is empty")
        if not self.labels:
            self.labels = label_order([e.label for e in train + val])
        if len(self.labels) < 2:
            raise TextDataError(f"need at least two classes, found {self.labels}")
        if s.model == "pretrained":
            from vlattn_text.pretrained.source import find_encoder
            from vlattn_text.pretrained.wordpiece import WordPieceTokenizer

            source = find_encoder(s.encoder)
            self.tokenizer = WordPieceTokenizer(source.tokenizer_json(), int(s.max_len or 0))
            self.encoder_info = {"config": source.read_config().to_dict(), "fingerprint": source.fingerprint()}
            self.training_run = True
        else:
            fit_on = examples if s.vocab_from == "all" and not s.val_data else train
            self.tokenizer = Tokenizer(
                lower=s.lower, min_freq=s.min_freq or 1, max_words=s.max_words, oov=bool(s.oov)
            ).fit(e.text for e in fit_on)
        train_items = self.to_items(train)
        priors, linear = s.model == "ngram" and s.lexical == "nb", s.linear != "none"
        whole = self.collate(train_items) if priors or linear else None  # the training split as one batch
        self.ngram_priors = self._ngram_priors(whole) if priors and whole is not None else None
        self.linear_model = self._fit_linear(whole) if linear and whole is not None else None
        return DataSplits(train_items, self.to_items(val) if val else None)

    def _new_linear(self) -> NaiveBayesLogistic:
        from vlattn_text.linear import NaiveBayesLogistic

        assert self.tokenizer is not None
        s = self.settings
        return NaiveBayesLogistic(self.tokenizer.vocab_size, len(self.labels), s.bigram_buckets, s.subword_buckets or 0)

    def _fit_linear(self, batch: TextBatch) -> NaiveBayesLogistic:
        """The linear model fitted on ``batch`` (the training split), to convergence."""
        model = self._new_linear()
        model.fit(batch.ids, batch.subwords, batch.labels, c=self.settings.linear_c)
        return model

    def _ngram_priors(self, batch: TextBatch) -> NgramPriors:
        """Naive Bayes log-count ratios of the words, bigrams and character n-grams of ``batch``."""
        from vlattn_text.models import output_size
        from vlattn_text.ngram import NgramPriors, bag_ratios, ngram_bags

        assert self.tokenizer is not None
        s, classes = self.settings, len(self.labels)
        bags = ngram_bags(batch.ids, batch.subwords, s.bigram_buckets)
        sizes = {
            "words": self.tokenizer.vocab_size,
            "bigrams": s.bigram_buckets + 1,
            "subwords": (s.subword_buckets or 0) + 1,
        }
        ratios = {
            name: bag_ratios(bags[name], batch.labels, classes, size)
            if name in bags
            else torch.zeros(size, output_size(classes))
            for name, size in sizes.items()
        }
        return NgramPriors(ratios["words"], ratios["bigrams"], ratios["subwords"] if s.subword_buckets else None)

    def eval_data(self, data: str | None, options: Any) -> list[Item]:
        """``vlattn eval --data FILE`` scores FILE; without it, the validation split of the training data."""
        if data is not None:
            return self.to_items(self._read([p for p in data.split(",") if p]))
        _, _, val = self._split()
        if not val:
            raise VlattnError("this model was trained without a validation split; pass --data FILE")
        return self.to_items(val)

    def encode(self, text: str) -> Encoded:
        """Tokenize ``text`` and keep the last ``max_len`` tokens (Keras' ``truncating='pre'``)."""
        if self.tokenizer is None:
            raise VlattnError("the tokenizer is not ready: call setup_data() or load_artifacts() first")
        max_len = self.settings.max_len or 0
        if self.settings.model == "pretrained":  # WordPiece keeps the first pieces, [CLS] and [SEP]
            return self.tokenizer.encode(text)
        encoded = None
        window = max_len * 64 + 1024
        if max_len and len(text) > window:
            # Only the last max_len tokens count: tokenize a tail of the text first (a 10 MB line
            # stays cheap); the result is exact whenever that tail holds more than max_len tokens.
            tail = self.tokenizer.encode(text[-window:])
            if len(tail.ids) > max_len:
                encoded = tail
        if encoded is None:
            encoded = self.tokenizer.encode(text)
        start, stop = truncate(encoded.ids, max_len, "pre")
        return Encoded(encoded.ids[start:stop], encoded.words[start:stop])

    def encode_many(self, texts: Sequence[str]) -> list[Encoded]:
        """:meth:`encode` of each text (a pretrained model's tokenizer takes them as one batch)."""
        if self.settings.model == "pretrained" and self.tokenizer is not None:
            return self.tokenizer.encode_batch(texts)  # type: ignore[union-attr]
        return [self.encode(text) for text in texts]

    def make_item(self, encoded: Encoded, label: int = 0) -> Item:
        """An :class:`Item` of an encoded text (with its n-gram buckets when the model uses them)."""
        buckets = self.settings.subword_buckets or 0
        grams = [subword_ids(word, buckets) for word in encoded.words] if buckets else []
        return Item(encoded.ids, grams, label)

    def to_items(self, examples: Sequence[Example]) -> list[Item]:
        """Encode labelled examples."""
        index = {name: i for i, name in enumerate(self.labels)}
        items = []
        for example in examples:
            if example.label not in index:
                raise TextDataError(f"label {example.label!r} is not one of the model's classes {self.labels}")
            items.append(self.make_item(self.encode(example.text), index[example.label]))
        return items

    def collate(self, items: list[Item]) -> TextBatch:
        """Pad to the batch's longest text (the tutorial models: always to ``max_len``, post-padding)."""
        lengths = [len(item.ids) for item in items]
        width = max(lengths, default=0)
        if self.settings.model in TUTORIAL_MODELS:
            width = int(self.settings.max_len or width)
        width = max(width, 1)
        # Pad as Python lists and convert once: one tensor per batch, not one per text or word.
        ids = torch.tensor([item.ids[:width] + [0] * (width - len(item.ids)) for item in items], dtype=torch.long).view(
            len(items), width
        )
        subwords = None
        if self.settings.subword_buckets:
            subwords = pack_subwords([item.grams for item in items], width)
        return TextBatch(
            ids,
            torch.tensor(lengths, dtype=torch.long),
            torch.tensor([item.label for item in items], dtype=torch.long),
            subwords,
        )

    # -- model -----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The model named by ``config.model`` for the fitted vocabulary and classes (an
        :class:`~vlattn_text.ensemble.Ensemble` of them when ``config.ensemble > 1``)."""
        if self.tokenizer is None or not self.labels:
            raise VlattnError("build_model() needs the vocabulary: call setup_data() or load_artifacts() first")
        s = self.settings
        if s.ensemble > 1 or s.linear != "none":
            from vlattn_text.ensemble import Ensemble

            linear = None
            if s.linear != "none":  # fitted in setup_data; a fresh one when loading a model file
                linear = self.linear_model if self.linear_model is not None else self._new_linear()
            return Ensemble(self._build_single, s.ensemble, linear=linear, linear_weight=s.linear_weight)
        return self._build_single()

    def _build_single(self) -> nn.Module:
        from vlattn_text import models

        assert self.tokenizer is not None
        s = self.settings
        if s.model == "pretrained":
            return self._build_pretrained()
        vocab, classes = self.tokenizer.vocab_size, len(self.labels)
        if s.model == "tutorial-lstm":
            return models.TutorialLSTM(vocab, classes, s.embed_dim or 32, s.hidden_size or 100, s.dropout or 0.0)
        if s.model == "tutorial-attention":
            return models.TutorialAttention(
                vocab,
                classes,
                int(s.max_len or 32),
                s.embed_dim or 32,
                s.hidden_size or 100,
                s.dropout or 0.0,
                attention_options=s.attention_options,
            )
        unk = self.tokenizer.word_index.get("<unk>") if s.oov else None
        common: dict[str, Any] = {
            "embed_dim": s.embed_dim,
            "attention": s.attention,
            "attention_options": s.attention_options,
            "query": s.query,
            "dropout": s.dropout,
            "embed_dropout": s.embed_dropout,
            "word_dropout": s.word_dropout,
            "unk_index": unk,
            "subword_buckets": s.subword_buckets or 0,
        }
        if s.model == "ngram":
            return self._build_ngram(vocab, classes)
        if s.model == "transformer":
            from vlattn_text.transformer import TransformerClassifier

            return TransformerClassifier(
                vocab,
                classes,
                ff_dim=s.hidden_size,
                layers=s.layers,
                heads=s.heads,
                max_len=int(s.max_len or 512),
                **common,
            )
        return models.RecurrentClassifier(
            vocab,
            classes,
            hidden_size=s.hidden_size,
            cell=s.cell,
            bidirectional=s.bidirectional,
            layers=s.layers,
            **common,
        )

    def _build_ngram(self, vocab: int, classes: int) -> nn.Module:
        """The n-gram attention model, its lexical scores started at the training split's NB ratios."""
        from vlattn_text.ngram import NgramClassifier

        s = self.settings
        model = NgramClassifier(
            vocab,
            classes,
            embed_dim=s.embed_dim or 64,
            bigram_buckets=s.bigram_buckets,
            subword_buckets=s.subword_buckets or 0,
            attention=s.attention,
            attention_options=s.attention_options,
            query=s.query,
            mean_mix=s.mean_mix,
            dropout=s.dropout or 0.0,
            embed_dropout=s.embed_dropout or 0.0,
            item_dropout=s.word_dropout or 0.0,
            lexical=s.lexical,
        )
        if self.ngram_priors is not None:
            model.init_lexical(self.ngram_priors, s.lexical_scale)
        return model

    def _build_pretrained(self) -> nn.Module:
        """The encoder named by ``config.encoder`` (its weights read unless building on the meta
        device) under a pooling attention and a linear head."""
        from vlattn_text.pretrained.bert import BertConfig, BertEncoder
        from vlattn_text.pretrained.classifier import PretrainedClassifier
        from vlattn_text.pretrained.source import find_encoder

        s = self.settings
        source = find_encoder(s.encoder)
        config = BertConfig.from_dict(self.encoder_info.get("config") or source.read_config().to_dict())
        if torch.empty(0).device.type == "meta":
            encoder = BertEncoder(config)
        else:
            wanted = self.encoder_info.get("fingerprint")
            if wanted and source.fingerprint() != wanted:
                raise VlattnError(
                    f"the encoder {s.encoder!r} ({source.folder}) is not the one this model was trained on; "
                    "install the same version of it"
                )
            encoder = source.load_encoder(config)
        return PretrainedClassifier(
            encoder,
            len(self.labels),
            attention=s.attention,
            attention_options=s.attention_options,
            query=s.query,
            dropout=s.dropout or 0.0,
            finetune_layers=s.finetune_layers,
            mix_layers=s.mix_layers,
            head_lr=s.head_lr,
            feature_cache=200_000 if self.training_run else 0,
        )

    def loss(self, model: nn.Module, batch: TextBatch) -> tuple[Tensor, Tensor]:
        """``(loss, logits)``: cross-entropy (binary for two classes) plus the embedding L2 penalty.

        An ensemble in training sums its members' own losses (each member learns as if alone);
        in evaluation the loss is that of its averaged prediction.
        """
        output = model(batch.ids, batch.lengths, batch.subwords)
        if output.members is not None and model.training:
            loss = sum(
                (classification_loss(member, batch.labels) for member in output.members),
                start=output.logits.new_zeros(()),
            )
        else:
            loss = classification_loss(output.logits, batch.labels)
        if self.settings.embedding_l2:
            embeddings = [m.weight for name, m in model.named_modules() if name.split(".")[-1] == "embedding"]
            loss = loss + self.settings.embedding_l2 * sum(e.pow(2).sum() for e in embeddings)
        return loss, output.logits

    def training_step(self, model: nn.Module, batch: TextBatch) -> tuple[Tensor, dict[str, Tensor]]:
        loss, logits = self.loss(model, batch)
        accuracy = (predict_classes(logits) == batch.labels).float().mean()
        return loss, {"accuracy": accuracy.detach()}

    def evaluate(self, model: nn.Module, batches: Iterable[TextBatch], options: Any = None) -> dict[str, float]:
        """Accuracy, mean loss and macro-F1 over all batches."""
        classes = len(self.labels)
        confusion = torch.zeros(classes, classes, dtype=torch.long)
        loss_sum, count = 0.0, 0
        for batch in batches:
            loss, logits = self.loss(model, batch)
            predicted = predict_classes(logits).cpu()
            truth = batch.labels.cpu()
            confusion.index_put_((truth, predicted), torch.ones_like(truth), accumulate=True)
            loss_sum += float(loss) * len(truth)
            count += len(truth)
        if count == 0:
            raise VlattnError("the evaluation set is empty")
        return metrics_from_confusion(confusion) | {"loss": loss_sum / count}

    # -- artifacts -------------------------------------------------------------------------------
    def artifacts(self) -> dict[str, Any]:
        if self.tokenizer is None:
            return {"labels": self.labels}
        extra = {"encoder": self.encoder_info} if self.encoder_info else {}
        return {"tokenizer": self.tokenizer.to_dict(), "labels": self.labels, **extra}

    def load_artifacts(self, artifacts: Mapping[str, Any]) -> None:
        if "tokenizer" not in artifacts or "labels" not in artifacts:
            raise VlattnError("the model file has no tokenizer or label list")
        if artifacts["tokenizer"].get("kind") == "wordpiece":
            from vlattn_text.pretrained.wordpiece import WordPieceTokenizer

            self.tokenizer = WordPieceTokenizer.from_dict(artifacts["tokenizer"])
            self.encoder_info = dict(artifacts.get("encoder", {}))
        else:
            self.tokenizer = Tokenizer.from_dict(artifacts["tokenizer"])
        self.labels = [str(x) for x in artifacts["labels"]]


def pack_subwords(grams: Sequence[Sequence[Sequence[int]]], width: int) -> Tensor:
    """``grams[b][t]``: the n-gram buckets of word ``t`` of text ``b`` -> ``[B, width, K]``, 0-padded.

    Built from one flat tensor of the real n-grams (vectorised placement), not from nested lists.
    """
    counts = [0] * (len(grams) * width)
    flat: list[int] = []
    for row, words in enumerate(grams):
        for col, word_grams in enumerate(words[:width]):
            counts[row * width + col] = len(word_grams)
            flat.extend(word_grams)
    depth = max(max(counts, default=0), 1)
    out = torch.zeros(len(counts), depth, dtype=torch.long)
    if flat:
        sizes = torch.tensor(counts, dtype=torch.long)
        token = torch.repeat_interleave(torch.arange(len(counts)), sizes)
        starts = torch.cumsum(sizes, 0) - sizes
        offset = torch.arange(len(flat)) - torch.repeat_interleave(starts, sizes)
        out[token, offset] = torch.tensor(flat, dtype=torch.long)
    return out.view(len(grams), width, depth)


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of ``[B, 1]`` sigmoid logits (binary) or ``[B, C]`` logits against ``labels [B]``."""
    if logits.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


def predict_classes(logits: Tensor) -> Tensor:
    """Class indices ``[B]`` from ``[B, 1]`` sigmoid logits or ``[B, C]`` logits."""
    if logits.shape[-1] == 1:
        return (logits.squeeze(-1) > 0).long()
    return logits.argmax(-1)


def class_probabilities(logits: Tensor) -> Tensor:
    """``[B, C]`` probabilities from ``[B, 1]`` sigmoid logits or ``[B, C]`` logits."""
    if logits.shape[-1] == 1:
        positive = torch.sigmoid(logits)
        return torch.cat([1 - positive, positive], dim=-1)
    return torch.softmax(logits, dim=-1)


def metrics_from_confusion(confusion: Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 from a ``[C, C]`` confusion matrix (rows = truth)."""
    confusion = confusion.double()
    total = confusion.sum()
    correct = confusion.diag()
    precision = correct / confusion.sum(0).clamp(min=1)
    recall = correct / confusion.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {"accuracy": float(correct.sum() / total.clamp(min=1)), "macro_f1": float(f1.mean())}
