"""Image datasets for DRAW: binarized MNIST (.npz), torchvision MNIST / FashionMNIST, image folders.

Every dataset yields float tensors ``[C, H, W]`` with values in ``[0, 1]``.
Binarisation: ``static`` draws one fixed Bernoulli sample per image (seeded), ``dynamic`` draws a
new one every time an image is read, ``threshold`` rounds at 0.5, ``none`` keeps intensities
(use the continuous Bernoulli likelihood then).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vlattn.data.images import load_image_tensor
from vlattn.errors import VlattnError

BINARIZED_MNIST = Path("mnist") / "binarized_mnist.npz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class DrawDataError(VlattnError):
    """DRAW training or evaluation data that cannot be found or read."""


def shared_data_candidates() -> list[Path]:
    """Where the shared data folder is looked for: ``$VLATTN_DATA``, ``./../shared/data`` and the
    ``shared/data`` folder beside a source checkout of this package."""
    found = []
    if os.environ.get("VLATTN_DATA"):
        found.append(Path(os.environ["VLATTN_DATA"]))
    found.append(Path.cwd().parent / "shared" / "data")
    found.append(Path(__file__).resolve().parents[3] / "shared" / "data")
    return found


def default_binarized_mnist() -> Path:
    """The first ``mnist/binarized_mnist.npz`` among :func:`shared_data_candidates`."""
    for root in shared_data_candidates():
        if (root / BINARIZED_MNIST).is_file():
            return root / BINARIZED_MNIST
    tried = ", ".join(str(r / BINARIZED_MNIST) for r in shared_data_candidates())
    raise DrawDataError(f"binarized MNIST not found (tried {tried}); pass --data-path FILE.npz")


class TensorImages(Dataset[torch.Tensor]):
    """Images held in memory as ``uint8 [N, C, H, W]`` (0..255) or binary floats.

    Args:
        images: ``[N, C, H, W]`` tensor, uint8 intensities or float values in ``[0, 1]``.
        binarize: ``none``, ``threshold``, ``static`` or ``dynamic`` (see module docstring).
        seed: seed of the ``static`` sample.
    """

    def __init__(self, images: torch.Tensor, binarize: str = "none", seed: int = 0) -> None:
        data = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        if binarize == "threshold":
            data = (data >= 0.5).float()
        elif binarize == "static":
            data = torch.bernoulli(data, generator=torch.Generator().manual_seed(seed))
        elif binarize not in ("none", "dynamic"):
            raise DrawDataError(f"unknown binarisation {binarize!r}")
        self.images = data
        self.dynamic = binarize == "dynamic"

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[index]
        return torch.bernoulli(image) if self.dynamic else image

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)


def load_binarized_mnist(path: str | Path | None, split: str) -> TensorImages:
    """One split (``train`` / ``valid`` / ``test``) of the Larochelle-Murray binarized MNIST ``.npz``
    (arrays ``X_train``, ``X_valid``, ``X_test`` of shape ``[N, 784]``)."""
    file = Path(path) if path else default_binarized_mnist()
    key = f"X_{split}"
    try:
        with np.load(file) as archive:
            if key not in archive:
                raise DrawDataError(f"{file} has no array {key!r} (found: {', '.join(archive.files)})")
            array = archive[key]
    except FileNotFoundError:
        raise DrawDataError(f"binarized MNIST file not found: {file}") from None
    except (OSError, ValueError) as exc:
        raise DrawDataError(f"{file} is not a readable .npz file ({exc})") from None
    if array.ndim != 2 or array.shape[1] != 784:
        raise DrawDataError(f"{file}:{key} has shape {array.shape}, expected [N, 784]")
    images = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).view(-1, 1, 28, 28)
    return TensorImages(images)


def load_torchvision(name: str, root: str | Path, train: bool, binarize: str, seed: int = 0) -> TensorImages:
    """torchvision's ``MNIST`` or ``FashionMNIST`` from ``root`` (never downloads)."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError as exc:
        raise DrawDataError(f"{cls.__name__} not found under {root} ({exc})") from None
    images = ds.data.unsqueeze(1)  # uint8 [N, 1, 28, 28]
    return TensorImages(images, binarize=binarize, seed=seed + (0 if train else 1))


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly or recursively under ``folder``, sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise DrawDataError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DrawDataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def load_folder(files: Sequence[Path], size: int, rgb: bool, binarize: str, seed: int = 0) -> TensorImages:
    """Images from a list of files, resized to ``size x size`` (greyscale unless ``rgb``)."""
    images = torch.stack([load_image_tensor(f, size, channels=3 if rgb else 1) for f in files])
    return TensorImages(images, binarize=binarize, seed=seed)


def split_files(files: Sequence[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """A seeded random split of ``files`` into train / validation lists."""
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = round(len(files) * val_fraction)
    val = [files[i] for i in order[:n_val]]
    train = [files[i] for i in order[n_val:]]
    return train, val
