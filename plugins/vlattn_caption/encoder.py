"""Image encoders: ``[B, 3, S, S]`` uint8 images -> ``[B, L, D]`` annotation vectors (L = grid x grid).

* ``small-cnn``: a four-layer CNN that trains from scratch (the bundled synthetic-scene model).
* any torchvision classifier with a convolutional trunk (``resnet50``, ``vgg16``,
  ``efficientnet_b0``, ``mobilenet_v3_large``, ``densenet121``, ``convnext_tiny`` ...), cut before its
  pooling layer. ``pretrained=True`` loads torchvision's weights when they can be had (cached or
  downloadable) and raises a clear :class:`PretrainedUnavailableError` when they cannot.

Either way the feature map is adaptively average-pooled to ``grid x grid`` locations, the
paper's "annotation vectors" (14 x 14 by default).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlattn.errors import VlattnError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedUnavailableError(VlattnError):
    """torchvision's pretrained weights are neither cached nor downloadable."""


class SmallCNN(nn.Module):
    """Four conv layers with batch norm: a strided 5x5 stem, a 2x2 max-pool (output stride 4)."""

    def __init__(self, channels: int = 96) -> None:
        super().__init__()

        def block(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
            return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.layers = nn.Sequential(
            *block(3, 32, kernel=5, stride=2),
            *block(32, 64),
            nn.MaxPool2d(2),
            *block(64, channels),
            *block(channels, channels),
        )
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W]`` normalised -> ``[B, C, H/4, W/4]``."""
        return self.layers(x)


def torchvision_trunk(name: str, pretrained: bool) -> tuple[nn.Module, int]:
    """The convolutional trunk of the torchvision model ``name`` and its output channels."""
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise VlattnError(
            f"unknown encoder {name!r} (use 'small-cnn' or a torchvision model name such as resnet50)"
        ) from None
    model = builder(weights=None)
    if pretrained:
        model.load_state_dict(_pretrained_state(name))
    if hasattr(model, "features") and isinstance(model.features, nn.Module):
        trunk: nn.Module = model.features
    elif hasattr(model, "fc") and hasattr(model, "avgpool"):
        children = dict(model.named_children())
        names = list(children)
        trunk = nn.Sequential(*(children[n] for n in names[: names.index("avgpool")]))
    else:
        raise VlattnError(f"encoder {name!r} has no convolutional trunk vlattn knows how to cut")
    with torch.no_grad():
        was_training = trunk.training
        trunk.eval()
        channels = int(trunk(torch.zeros(1, 3, 64, 64)).shape[1])
        trunk.train(was_training)
    return trunk, channels


def _pretrained_state(name: str) -> dict[str, Tensor]:
    import socket
    import urllib.error

    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        raise PretrainedUnavailableError(f"torchvision has no pretrained weights for {name!r}") from None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        return weights.get_state_dict(progress=False)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        cache = torch.hub.get_dir()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PretrainedUnavailableError(
            f"pretrained weights for {name} ({weights.url.rsplit('/', 1)[-1]}) are not cached in "
            f"{cache}/checkpoints and cannot be downloaded ({reason}); connect once to fetch them, "
            f"or train without --pretrained"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


class Encoder(nn.Module):
    """uint8 images to annotation vectors.

    Args:
        name: ``"small-cnn"`` or a torchvision model name.
        grid: side of the annotation grid (L = grid * grid).
        pretrained: load torchvision's ImageNet weights (torchvision encoders only).
        fine_tune_blocks: with ``pretrained``, how many of the trunk's last blocks train
            (0 = frozen trunk, -1 = all). Without ``pretrained`` everything trains.
        channels: width of ``small-cnn``.
        load_weights: with ``pretrained``, fetch the weights (``False`` when a model file is
            about to supply them).
        coordinates: append each location's ``(x, y)`` in ``[-1, 1]`` to its annotation vector
            (``D`` grows by 2), so that the attended context says where it came from.
    """

    def __init__(
        self,
        name: str = "small-cnn",
        grid: int = 14,
        pretrained: bool = False,
        fine_tune_blocks: int = 0,
        channels: int = 96,
        load_weights: bool = True,
        coordinates: bool = False,
    ) -> None:
        super().__init__()
        if name == "small-cnn":
            if pretrained:
                raise VlattnError(
                    "small-cnn has no pretrained weights; drop --pretrained or pick a torchvision encoder"
                )
            cnn = SmallCNN(channels)
            self.trunk: nn.Module = cnn
            self.dim = cnn.out_channels
        else:
            self.trunk, self.dim = torchvision_trunk(name, pretrained and load_weights)
        self.frozen: list[nn.Module] = []
        if pretrained and fine_tune_blocks >= 0:
            blocks = list(self.trunk.children())
            keep = len(blocks) - fine_tune_blocks if fine_tune_blocks > 0 else len(blocks)
            for block in blocks[:keep]:
                block.requires_grad_(False)
                self.frozen.append(block)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.grid = grid
        self.coordinates = coordinates
        if coordinates:
            self.dim += 2
            axis = torch.linspace(-1.0, 1.0, grid)
            ys, xs = torch.meshgrid(axis, axis, indexing="ij")
            self.register_buffer("coords", torch.stack([xs, ys]).unsqueeze(0), persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> Encoder:
        super().train(mode)
        for block in self.frozen:  # frozen blocks keep their batch-norm statistics
            block.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, S, S]`` uint8 (or float in 0..1) -> ``[B, grid*grid, D]`` annotation vectors
        (row-major locations)."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        x = (x - self.mean) / self.std
        features = self.pool(self.trunk(x))
        if self.coordinates:
            features = torch.cat([features, self.coords.expand(features.shape[0], -1, -1, -1)], dim=1)
        return features.flatten(2).transpose(1, 2)
