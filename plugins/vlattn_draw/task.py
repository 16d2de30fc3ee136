"""The ``draw`` task: trains and evaluates DRAW through vlattn's common trainer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch.utils.data import Dataset

from vlattn.config import option
from vlattn.task import DataSplits, Task
from vlattn_draw import data as draw_data
from vlattn_draw.model import Draw, DrawShape, importance_weighted_nll

DataKind = Literal["binarized_mnist", "mnist", "fashion_mnist", "folder"]


@dataclass
class DrawConfig:
    """Options of the ``draw`` task (model and data)."""

    data: DataKind = option("binarized_mnist", help="dataset")
    data_path: str = option(
        "", help="binarized MNIST .npz, torchvision root folder, or image folder (empty = ../shared/data)"
    )
    binarize: Literal["static", "dynamic", "threshold", "none"] = option(
        "dynamic", help="binarisation of mnist / fashion_mnist / folder images (binarized_mnist is static)"
    )
    image_size: int = option(32, help="folder images are resized to this square size")
    rgb: bool = option(False, help="folder images in colour (else grayscale)")
    val_fraction: float = option(0.1, help="share of a folder held out for validation")
    steps: int = option(64, help="T, number of glimpses")
    read_attention: bool = option(True, help="Gaussian read attention (off: read the whole image)")
    write_attention: bool = option(True, help="Gaussian write attention (off: write the whole canvas)")
    read_n: int = option(2, help="read grid size N")
    write_n: int = option(5, help="write grid size N")
    enc_size: int = option(256, help="encoder LSTM units")
    dec_size: int = option(256, help="decoder LSTM units")
    z_size: int = option(100, help="latent units per step")
    likelihood: Literal["bernoulli", "continuous_bernoulli"] = option(
        "bernoulli", help="pixel likelihood: bernoulli (binary data) or continuous_bernoulli ([0, 1] data)"
    )

    def validate(self) -> None:
        """Raise ``ValueError`` for options that cannot work together."""
        positive = {
            "steps": self.steps,
            "read_n": self.read_n,
            "write_n": self.write_n,
            "enc_size": self.enc_size,
            "dec_size": self.dec_size,
            "z_size": self.z_size,
            "image_size": self.image_size,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be between 0 and 1")
        continuous = self.binarize == "none" and self.data != "binarized_mnist"
        if continuous and self.likelihood == "bernoulli":
            raise ValueError(
                "binarize=none gives intensities in [0, 1]: use likelihood=continuous_bernoulli or a binarisation"
            )


@dataclass
class DrawEvalOptions:
    """Extra options of ``vlattn eval`` for DRAW models."""

    iw_samples: int = option(0, help="also report the importance-weighted bound with K posterior samples (0 = off)")
    iw_chunk: int = option(
        0, help="posterior samples evaluated at once for --iw-samples (0 = automatic, about 4096 images a pass)"
    )


class DrawTask(Task):
    """DRAW (Gregor et al. 2015) on binary or [0, 1] images; metrics in nats per image."""

    name: ClassVar[str] = "draw"
    Config = DrawConfig
    EvalOptions = DrawEvalOptions
    trainer_defaults: ClassVar[Mapping[str, Any]] = {
        "epochs": 20,
        "batch_size": 128,
        "lr": 1e-3,
        "grad_clip": 5.0,
    }
    best_metric = ("nll_bound", "min")

    def __init__(self, config: DrawConfig) -> None:
        super().__init__(config)
        self.image_shape: tuple[int, int, int] | None = None

    # -- data ------------------------------------------------------------------------------------
    def _path(self) -> str | None:
        return self.config.data_path or None

    def _torchvision_root(self) -> Path:
        if self.config.data_path:
            return Path(self.config.data_path)
        return draw_data.shared_data_candidates()[0]

    def _load(self, split: str) -> Dataset[Any]:
        c = self.config
        if c.data == "binarized_mnist":
            return draw_data.load_binarized_mnist(self._path(), split)
        # Evaluation sets get one fixed (static) sample instead of a new one per read.
        binarize = "static" if split != "train" and c.binarize == "dynamic" else c.binarize
        if c.data in ("mnist", "fashion_mnist"):
            return draw_data.load_torchvision(c.data, self._torchvision_root(), split == "train", binarize)
        if not c.data_path:
            raise draw_data.DrawDataError("data=folder needs --data-path FOLDER")
        train, val = draw_data.split_files(draw_data.list_images(c.data_path), c.val_fraction, seed=0)
        files = train if split == "train" else val
        return draw_data.load_folder(files, c.image_size, c.rgb, binarize)

    def setup_data(self) -> DataSplits:
        """Train and validation splits (binarized MNIST: 50,000 / 10,000)."""
        train = self._load("train")
        val = self._load("valid" if self.config.data == "binarized_mnist" else "test")
        if self.config.data in ("mnist", "fashion_mnist"):
            val = None  # the torchvision test split is kept for ``vlattn eval``
        self.image_shape = train.image_shape  # type: ignore[attr-defined]
        return DataSplits(train=train, val=val)

    def eval_data(self, data: str | None, options: Any) -> Dataset[Any]:
        """The 10,000 test images by default; ``--data`` names another file or folder."""
        c = self.config
        if data is None:
            if c.data == "folder":
                return self._load("valid")
            return self._load("test")
        path = Path(data)
        if path.is_dir():
            shape = self._shape()
            files = draw_data.list_images(path)
            return draw_data.load_folder(files, shape.height, shape.channels == 3, _eval_binarize(c))
        return draw_data.load_binarized_mnist(path, "test")

    # -- model -----------------------------------------------------------------------------------
    def _shape(self) -> DrawShape:
        c = self.config
        channels, height, width = self.image_shape or self._default_image_shape()
        return DrawShape(
            channels=channels,
            height=height,
            width=width,
            steps=c.steps,
            read_attention=c.read_attention,
            write_attention=c.write_attention,
            read_n=c.read_n,
            write_n=c.write_n,
            enc_size=c.enc_size,
            dec_size=c.dec_size,
            z_size=c.z_size,
            likelihood=c.likelihood,
        )

    def _default_image_shape(self) -> tuple[int, int, int]:
        if self.config.data == "folder":
            return (3 if self.config.rgb else 1, self.config.image_size, self.config.image_size)
        return (1, 28, 28)

    def build_model(self) -> Draw:
        """A freshly initialised DRAW network for the config and the data's image shape."""
        return Draw(self._shape())

    def collate(self, items: list[Any]) -> torch.Tensor:
        """Stack images into ``[Bt, C, H, W]``."""
        return torch.stack(items)

    def training_step(self, model: torch.nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Negative ELBO per image (nats), with its reconstruction and KL parts logged."""
        out = model(batch)
        loss = (out.reconstruction + out.kl).mean()
        return loss, {"reconstruction": out.reconstruction.mean().detach(), "kl": out.kl.mean().detach()}

    def evaluate(
        self, model: torch.nn.Module, batches: Iterable[torch.Tensor], options: Any = None
    ) -> dict[str, float]:
        """Mean negative ELBO (``nll_bound``), its parts and, with ``iw_samples = K > 0``, the
        importance-weighted bound ``iw_nll`` (tighter), all in nats per image."""
        options = options if options is not None else self.EvalOptions()
        iw, chunk = int(options.iw_samples), int(options.iw_chunk)
        if iw < 0:
            raise draw_data.DrawDataError("--iw-samples must be >= 0")
        if chunk < 0:
            raise draw_data.DrawDataError("--iw-chunk must be >= 0")
        totals = {"reconstruction": 0.0, "kl": 0.0, "iw_nll": 0.0}
        count = 0
        for batch in batches:
            out = model(batch)
            totals["reconstruction"] += float(out.reconstruction.sum())
            totals["kl"] += float(out.kl.sum())
            if iw:
                per_pass = chunk or max(1, 4096 // batch.shape[0])
                totals["iw_nll"] += float(importance_weighted_nll(model, batch, iw, per_pass).sum())
            count += batch.shape[0]
        if count == 0:
            raise draw_data.DrawDataError("the evaluation set is empty")
        metrics = {
            "nll_bound": (totals["reconstruction"] + totals["kl"]) / count,
            "reconstruction": totals["reconstruction"] / count,
            "kl": totals["kl"] / count,
            "images": float(count),
        }
        metrics["loss"] = metrics["nll_bound"]
        if iw:
            metrics["iw_nll"] = totals["iw_nll"] / count
            metrics["iw_samples"] = float(iw)
        return metrics

    # -- model-file state -------------------------------------------------------------------------
    def artifacts(self) -> dict[str, Any]:
        """The image shape the model was built for."""
        channels, height, width = self.image_shape or self._default_image_shape()
        return {"image_shape": [channels, height, width]}

    def load_artifacts(self, artifacts: Mapping[str, Any]) -> None:
        """Restore the image shape."""
        shape = artifacts.get("image_shape")
        if shape is not None:
            channels, height, width = (int(v) for v in shape)
            self.image_shape = (channels, height, width)


def _eval_binarize(config: DrawConfig) -> str:
    return "none" if config.likelihood == "continuous_bernoulli" else "static"
