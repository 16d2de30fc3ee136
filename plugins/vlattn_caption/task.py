"""The ``caption`` task: Show, Attend and Tell (Xu et al. 2015) for the common trainer.

``vlattn train caption --attention soft-spatial --out runs/cap`` trains on synthetic scenes (no
download); ``--data dataset_flickr8k.json --image-root Flicker8k_Dataset --encoder resnet50
--pretrained`` trains on a Karpathy split. Validation decodes captions (beam search, never
teacher forcing) and scores them; BLEU-4 picks the best checkpoint. ``--scene-objects 1-5
--scene-sizes 0.12-0.38 --scene-background 15-230 --scene-noise 16`` draw the synthetic scenes from
wider ranges; ``--synthetic-suite varied`` makes the test split a fixed suite of such scenes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from vlattn.attention.reinforce import advantage_statistics
from vlattn.attention.spatial import HardSpatialAttention
from vlattn.config import option
from vlattn.task import DataSplits, Task
from vlattn_caption import records as rec
from vlattn_caption.dataset import CaptionEvaluationSet, CaptionTrainingSet, collate
from vlattn_caption.decoder import ShowAttendTellDecoder
from vlattn_caption.encoder import Encoder
from vlattn_caption.metrics import caption_scores, grounding_counts
from vlattn_caption.model import CaptionModel, reinforce_gradient_ratios, repeat_batch
from vlattn_caption.search import decode
from vlattn_caption.synthetic import SUITES, SceneStyle
from vlattn_caption.vocab import Vocabulary


@dataclass
class CaptionConfig:
    """Options of the ``caption`` task."""

    data: str = option(
        "synthetic", help="'synthetic', or a Karpathy JSON / JSONL / CSV file (or a folder with dataset.json)"
    )
    image_root: str = option("", help="folder the dataset's image paths are relative to (default: the file's folder)")
    synthetic_train: int = option(6000, help="synthetic training scenes")
    synthetic_val: int = option(300, help="synthetic validation scenes")
    synthetic_test: int = option(500, help="synthetic test scenes")
    synthetic_seed: int = option(0, help="seed of the synthetic scenes")
    scene_objects: str = option("1-3", help="synthetic scenes: objects per scene, LOW-HIGH within 1-5")
    scene_sizes: str = option(
        "", help="synthetic scenes: object side as a fraction of the image, LOW-HIGH in 0.05-0.45 ('' = 2 fixed sizes)"
    )
    scene_background: str = option(
        "60-140", help="synthetic scenes: background grey level, LOW-HIGH within 0-256 (HIGH excluded)"
    )
    scene_noise: float = option(8.0, help="synthetic scenes: standard deviation of the background noise, 0-100")
    synthetic_suite: str = option(
        "",
        help="synthetic data: score the test split on this fixed scene suite instead ('' = the test scenes)",
        choices=("", *SUITES),
    )
    image_size: int = option(0, help="images are resized to this square side (0 = 64 for synthetic, 224 otherwise)")
    grid: int = option(14, help="side of the annotation grid (L = grid * grid locations)")
    encoder: str = option("small-cnn", help="'small-cnn' or a torchvision model (resnet50, vgg16, efficientnet_b0 ...)")
    pretrained: bool = option(False, help="start a torchvision encoder from its ImageNet weights")
    fine_tune_blocks: int = option(0, help="with --pretrained: last trunk blocks to train (0 = frozen, -1 = all)")
    cnn_channels: int = option(96, help="width of small-cnn's annotation vectors")
    coordinates: bool = option(True, help="append each location's (x, y) to its annotation vector")
    cache_annotations: bool = option(
        False, help="with a frozen pretrained encoder: encode each training image once (kept in memory, fp16)"
    )
    attention: str = option("soft-spatial", help="attention mechanism by name (soft-spatial, hard-spatial, ...)")
    attention_options: dict = option({}, help='extra mechanism options as JSON, e.g. {"hidden_dim": 128}')
    embed_dim: int = option(128, help="word embedding size")
    hidden_dim: int = option(256, help="LSTM size")
    dropout: float = option(0.5, help="dropout before the output layer")
    gate: bool = option(True, help="scalar gate beta on the context")
    context_dropout: float = option(
        0.0, help="training: probability of hiding the context from the LSTM input at a step (0 = the paper)"
    )
    doubly_stochastic: float = option(1.0, help="weight of the attention regulariser mean_i (1 - sum_t alpha_ti)^2")
    attention_entropy: float = option(
        0.0, help="soft attention: weight of the mean attention entropy in the loss (> 0: sharper glimpses)"
    )
    entropy_weight: float = option(0.01, help="hard attention: REINFORCE entropy bonus weight")
    baseline_decay: float = option(0.9, help="hard attention: moving-average baseline decay")
    reward_baseline: Literal["moving-average", "learned", "leave-one-out", "none"] = option(
        "moving-average",
        help="hard attention: REINFORCE baseline of the per-word reward (leave-one-out needs --reinforce-samples >= 2)",
    )
    reward_scale: float = option(0.1, help="hard attention: factor on the REINFORCE advantage (the authors' 0.1)")
    reward_credit: Literal["sequence", "to-go"] = option(
        "sequence",
        help="hard attention: credit each glimpse with the whole caption's reward, or with the words from it on",
    )
    reward_discount: float = option(
        1.0, help="hard attention, to-go credit: discount per word after the glimpse (1 = unbiased)"
    )
    reinforce_samples: int = option(1, help="hard attention: location draws per training caption")
    reinforce_scope: Literal["all", "scorer"] = option(
        "all", help="hard attention: REINFORCE gradient to every module, or to the attention scorer only"
    )
    reinforce_diagnostics: int = option(
        0, help="hard attention: every N training steps log REINFORCE/likelihood gradient-norm ratios (0 = never)"
    )
    hard_decoding: Literal["expectation", "argmax", "sample"] = option(
        "expectation", help="hard attention at inference: expected context, argmax location, or a sampled one"
    )
    scheduled_sampling: float = option(0.0, help="probability of feeding back the model's own word")
    train_captions: Literal["all", "first"] = option(
        "all", help="train on every reference or only the first of each image"
    )
    init_from: str = option(
        "", help="start from this caption model file's weights and vocabulary (same architecture), e.g. to fine-tune"
    )
    min_word_freq: int = option(1, help="words seen fewer times become <unk>")
    max_vocab: int = option(0, help="keep at most this many words (0 = all)")
    max_caption_len: int = option(20, help="longer training captions are cut to this many words")
    # validation decodes every epoch during training, so its beam is smaller than vlattn eval's (5)
    eval_beam_size: int = option(3, help="beam size of validation decoding")
    eval_max_len: int = option(20, help="most words per decoded caption")
    length_penalty: float = option(0.0, help="length penalty exponent of beam search")

    def validate(self) -> None:
        checks = [
            (self.grid >= 1, "grid must be >= 1"),
            (self.image_size >= 0, "image_size must be >= 0"),
            (self.image_size == 0 or self.image_size >= 32, "image_size must be 0 (auto) or >= 32"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (0.0 <= self.context_dropout <= 1.0, "context_dropout must be in [0, 1]"),
            (0.0 <= self.scheduled_sampling <= 1.0, "scheduled_sampling must be in [0, 1]"),
            (self.eval_beam_size >= 1, "eval_beam_size must be >= 1"),
            (self.max_caption_len >= 1 and self.eval_max_len >= 1, "caption lengths must be >= 1"),
            (self.min_word_freq >= 1, "min_word_freq must be >= 1"),
            (self.synthetic_train >= 1, "synthetic_train must be >= 1"),
            (self.reward_scale > 0, "reward_scale must be > 0"),
            (0.0 <= self.reward_discount <= 1.0, "reward_discount must be in [0, 1]"),
            (self.entropy_weight >= 0, "entropy_weight must be >= 0"),
            (0.0 <= self.baseline_decay < 1.0, "baseline_decay must be in [0, 1)"),
            (self.reinforce_samples >= 1, "reinforce_samples must be >= 1"),
            (
                self.reward_baseline != "leave-one-out" or self.reinforce_samples >= 2,
                "reward_baseline leave-one-out needs reinforce_samples >= 2",
            ),
            (self.reinforce_diagnostics >= 0, "reinforce_diagnostics must be >= 0"),
            ("eval_mode" not in self.attention_options, "set hard attention's inference mode with hard_decoding"),
            (
                self.synthetic_suite in ("", *SUITES),
                f"synthetic_suite must be '' or one of {', '.join(SUITES)}, got {self.synthetic_suite!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.scene_style()

    def scene_style(self) -> SceneStyle:
        """The :class:`SceneStyle` of the synthetic train, val and test scenes (``ValueError`` with
        a one-line message naming the option if a ``scene_*`` value is unusable)."""
        return SceneStyle.from_options(
            self.scene_objects, self.scene_sizes, self.scene_background, self.scene_noise, prefix="scene_"
        )


@dataclass
class CaptionEvalOptions:
    """Extra ``vlattn eval`` options of the ``caption`` task."""

    split: Literal["val", "test"] = option("test", help="which split of the dataset to score")
    beam_size: int = option(5, help="beam size")
    max_len: int = option(0, help="most words per caption (0 = the model's eval_max_len)")
    alpha: float = option(0.0, help="length penalty exponent")
    meteor: bool = option(False, help="also compute METEOR (needs Java)")
    hard_decoding: str = option(
        "",
        help="hard attention: expectation, argmax or sample (default: the model's --hard-decoding)",
        choices=("", "expectation", "argmax", "sample"),
    )


class CaptionTask(Task):
    """Show-Attend-Tell image captioning."""

    name: ClassVar[str] = "caption"
    Config: ClassVar[type[Any]] = CaptionConfig
    EvalOptions: ClassVar[type[Any]] = CaptionEvalOptions
    trainer_defaults: ClassVar[Mapping[str, Any]] = {"epochs": 20, "lr": 1e-3, "batch_size": 32, "grad_clip": 5.0}
    best_metric: ClassVar[tuple[str, Literal["max", "min"]]] = ("bleu4", "max")

    def __init__(self, config: CaptionConfig) -> None:
        super().__init__(config)
        self.config: CaptionConfig = config
        self.vocab: Vocabulary | None = None
        self.restoring = False
        self.annotation_cache: dict[int, torch.Tensor] = {}
        self.steps_taken = 0

    # -- data ------------------------------------------------------------------------------------
    @property
    def synthetic(self) -> bool:
        return self.config.data == "synthetic"

    @property
    def image_size(self) -> int:
        return self.config.image_size or (64 if self.synthetic else 224)

    def records(self, split: str, data: str | None = None) -> list[rec.CaptionRecord]:
        """The records of ``split`` from the configured (or the given) dataset.

        Synthetic scenes are drawn with the config's scene style; with ``synthetic_suite`` set,
        ``"test"`` is that suite's scenes (named ``<part>/test/<index>``).
        """
        source = data or self.config.data
        if source == "synthetic":
            cfg = self.config
            if split == "test" and cfg.synthetic_suite:
                return rec.suite_records(cfg.synthetic_suite, self.image_size)
            count = {"train": cfg.synthetic_train, "val": cfg.synthetic_val, "test": cfg.synthetic_test}[split]
            return rec.synthetic_records(split, count, cfg.synthetic_seed, self.image_size, cfg.scene_style())
        found = [r for r in rec.read_records(source, self.config.image_root or None) if r.split == split]
        if not found and split != "train":
            raise rec.CaptionDataError(f"{source} has no {split!r} images")
        return found

    def setup_data(self) -> DataSplits:
        train = self.records("train")
        if not train:
            raise rec.CaptionDataError(f"{self.config.data} has no training images")
        if self.config.train_captions == "first":
            for r in train:
                r.captions = r.captions[:1]
        if self.vocab is None and self.config.init_from and not self.restoring:
            self.vocab = Vocabulary.from_json(self._init_header().artifacts["vocab"])
        if self.vocab is None:
            self.vocab = Vocabulary.build(
                (c for r in train for c in r.captions), self.config.min_word_freq, self.config.max_vocab
            )
        val = self.records("val")
        cache = self.synthetic
        size, max_len = self.image_size, self.config.max_caption_len
        return DataSplits(
            train=CaptionTrainingSet(train, self.vocab, size, max_len, cache_images=cache),
            val=CaptionEvaluationSet(val, self.vocab, size, max_len, cache_images=cache) if val else None,
        )

    def eval_data(self, data: str | None, options: Any) -> CaptionEvaluationSet:
        split = options.split
        assert self.vocab is not None, "load_artifacts or setup_data first"
        found = self.records(split, data)
        return CaptionEvaluationSet(found, self.vocab, self.image_size, self.config.max_caption_len, cache_images=False)

    def collate(self, items: list[Any]) -> Any:
        return collate(items)

    # -- model -----------------------------------------------------------------------------------
    def build_model(self) -> CaptionModel:
        if self.vocab is None:
            raise RuntimeError("the vocabulary is built by setup_data() or restored by load_artifacts()")
        cfg = self.config
        encoder = Encoder(
            cfg.encoder,
            cfg.grid,
            pretrained=cfg.pretrained,
            fine_tune_blocks=cfg.fine_tune_blocks,
            channels=cfg.cnn_channels,
            load_weights=not self.restoring,
            coordinates=cfg.coordinates,
        )
        decoder = ShowAttendTellDecoder(
            len(self.vocab),
            encoder.dim,
            cfg.embed_dim,
            cfg.hidden_dim,
            cfg.attention,
            dict(cfg.attention_options),
            cfg.dropout,
            cfg.gate,
            context_dropout=cfg.context_dropout,
        )
        hard = isinstance(decoder.attention, HardSpatialAttention)
        if isinstance(decoder.attention, HardSpatialAttention):
            decoder.attention.eval_mode = cfg.hard_decoding
            decoder.attention.score_gradient = cfg.reinforce_scope
        model = CaptionModel(
            encoder,
            decoder,
            hard=hard,
            baseline_decay=cfg.baseline_decay,
            entropy_weight=cfg.entropy_weight,
            baseline=cfg.reward_baseline,
            reward_scale=cfg.reward_scale,
            samples=cfg.reinforce_samples,
            credit=cfg.reward_credit,
            discount=cfg.reward_discount,
        )
        if cfg.init_from and not self.restoring:
            self._load_initial_weights(model)
        return model

    def _init_header(self) -> Any:
        from vlattn.checkpoint import read_header

        header = read_header(self.config.init_from)
        if header.task != "caption" or "vocab" not in header.artifacts:
            raise rec.CaptionDataError(f"--init-from {self.config.init_from} is not a caption model file")
        return header

    def _load_initial_weights(self, model: CaptionModel) -> None:
        """Copy ``init_from``'s weights into ``model``; the architectures must match exactly, except
        that the REINFORCE baseline's state (``reinforce.*``) may be absent on either side: a
        soft-attention model can start a hard-attention one (the two mechanisms share their
        parameters) and a hard one a soft one, the baseline starting afresh."""
        from safetensors.torch import load_file

        from vlattn.errors import ModelFileError

        self._init_header()
        state = {k: v for k, v in load_file(self.config.init_from).items() if not k.startswith("reinforce.")}
        own = {k: v for k, v in model.state_dict().items() if not k.startswith("reinforce.")}
        if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
            raise ModelFileError(
                f"--init-from {self.config.init_from} has another architecture than these options "
                "(encoder, grid, sizes, attention and vocabulary must match)"
            )
        model.load_state_dict(state, strict=False)

    def cached_annotations(self, net: CaptionModel, batch: Any) -> torch.Tensor | None:
        """``[B, L, D]`` annotations of a training batch from the cache, when caching is on and the
        encoder is frozen (else ``None``: the model encodes the images itself)."""
        frozen = not any(p.requires_grad for p in net.encoder.parameters())
        if not (self.config.cache_annotations and frozen):
            return None
        keys = batch["index"].tolist()
        missing = [row for row, key in enumerate(keys) if key not in self.annotation_cache]
        if missing:
            with torch.no_grad():
                fresh = net.encode(batch["images"][missing])
            for row, vectors in zip(missing, fresh, strict=True):
                self.annotation_cache[keys[row]] = vectors.to("cpu", torch.float16)
        device = batch["images"].device
        return torch.stack([self.annotation_cache[k] for k in keys]).to(device, torch.float32)

    def training_step(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        net = _unwrap(model)
        cfg = self.config
        annotations = self.cached_annotations(net, batch)
        images, captions, lengths = batch["images"], batch["captions"], batch["lengths"]
        draws = cfg.reinforce_samples if net.reinforce is not None else 1
        if draws > 1:  # consecutive rows: draws of locations for the same caption
            if annotations is None:
                annotations = net.encode(images)
            annotations, captions, lengths = repeat_batch(draws, annotations, captions, lengths)
        out = model(images, captions, lengths, cfg.scheduled_sampling, annotations=annotations)
        parts = net.loss(out, captions, cfg.doubly_stochastic, cfg.attention_entropy)
        logs: dict[str, Any] = {"nll": parts.nll, "attention_reg": parts.doubly_stochastic}
        if net.reinforce is not None:
            logs["reinforce"] = parts.reinforce
            if parts.advantage is not None and parts.words is not None:
                logs.update(advantage_statistics(parts.advantage, parts.words))
            self.steps_taken += 1
            if cfg.reinforce_diagnostics and self.steps_taken % cfg.reinforce_diagnostics == 0:
                logs.update(reinforce_gradient_ratios(net, parts))
        return parts.total, logs

    def caption_words(self, max_len: int | None = None) -> int:
        """Most words per decoded caption: ``max_len`` when given (> 0), else the model's
        ``eval_max_len`` (long enough for the longest captions it was trained on)."""
        return max_len if max_len else int(self.config.eval_max_len)

    def validation_options(self) -> CaptionEvalOptions:
        """Validation decodes with the config's (cheaper) beam, length and length penalty."""
        cfg = self.config
        return CaptionEvalOptions(
            split="val", beam_size=cfg.eval_beam_size, max_len=cfg.eval_max_len, alpha=cfg.length_penalty
        )

    def evaluate(
        self, model: torch.nn.Module, batches: Iterable[Any], options: CaptionEvalOptions | None = None
    ) -> dict[str, float]:
        assert self.vocab is not None
        net = _unwrap(model)
        options = options if options is not None else self.validation_options()
        beam, max_len, alpha = options.beam_size, self.caption_words(options.max_len), options.alpha
        hard_decoding = options.hard_decoding or None
        hypotheses: list[list[str]] = []
        references: list[list[list[str]]] = []
        nll_sum, tokens = 0.0, 0
        grounded = groundable = mentioned = 0
        has_boxes = False
        for batch in batches:
            annotations = net.encode(batch["images"])
            out = net.decoder(annotations, batch["captions"], batch["lengths"])
            parts = net.loss(out, batch["captions"], 0.0)
            nll_sum += float(parts.nll) * parts.tokens
            tokens += parts.tokens
            decoded = decode(
                net, annotations, beam_size=beam, max_len=max_len, alpha=alpha, hard_decoding=hard_decoding
            )
            for i, ids in enumerate(decoded.tokens):
                words = self.vocab.decode(ids)
                hypotheses.append(words)
                references.append(batch["references"][i])
                if batch["objects"][i] and batch["sizes"][i]:
                    has_boxes = True
                    g, a, m = grounding_counts(
                        words, decoded.weights[i].numpy(), batch["objects"][i], batch["sizes"][i][0], net.grid
                    )
                    grounded, groundable, mentioned = grounded + g, groundable + a, mentioned + m
        metrics = {"loss": nll_sum / max(tokens, 1)}
        metrics.update(caption_scores(hypotheses, references, meteor=options.meteor))
        if has_boxes:  # share of correctly named objects whose word attends inside the object's box
            metrics["grounding"] = grounded / groundable if groundable else 0.0
            metrics["object_words_correct"] = groundable / mentioned if mentioned else 0.0
        metrics["images"] = float(len(hypotheses))
        return metrics

    # -- model file --------------------------------------------------------------------------------
    def artifacts(self) -> dict[str, Any]:
        assert self.vocab is not None
        return {"vocab": self.vocab.to_json(), "image_size": self.image_size}

    def load_artifacts(self, artifacts: Mapping[str, Any]) -> None:
        self.vocab = Vocabulary.from_json(artifacts["vocab"])
        self.restoring = True


def _unwrap(model: torch.nn.Module) -> CaptionModel:
    from vlattn.checkpoint import unwrap

    return unwrap(model)  # type: ignore[return-value]
