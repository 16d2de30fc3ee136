"""The caption models this plugin ships (``--model NAME``); imports no torch."""

from __future__ import annotations

from pathlib import Path

from vlattn.model_files import BundledModels

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUNDLED = BundledModels(
    WEIGHTS_DIR,
    {
        "synthetic-soft": "soft attention, synthetic scenes of shapes",
        "synthetic-hard": "hard attention, synthetic scenes of shapes",
    },
    default="synthetic-soft",
    remedy="train it with scripts/train_caption_synthetic.py",
)
BUNDLED_MODEL = BUNDLED.path("synthetic-soft")
