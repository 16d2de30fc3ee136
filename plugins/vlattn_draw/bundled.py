"""The DRAW model this plugin ships (``--model NAME``); imports no torch."""

from __future__ import annotations

from pathlib import Path

from vlattn.model_files import BundledModels

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUNDLED = BundledModels(
    WEIGHTS_DIR,
    {"draw_mnist": "binarized MNIST digits, T=16"},
    default="draw_mnist",
    remedy="train it with scripts/train_draw_bundled.py",
)
BUNDLED_MODEL = BUNDLED.path("draw_mnist")
