"""The bundled synthetic-scenes caption models (skipped when the weight files are absent).

Thresholds sit below the figures that ``scripts/caption_results.py`` measures on 500 held-out
scenes (docs/caption.md), leaving room for the smaller sample used here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from vlattn_caption.predict import BUNDLED_MODEL, WEIGHTS_DIR, Captioner
from vlattn_caption.records import synthetic_records

HARD_MODEL = WEIGHTS_DIR / "synthetic-hard.safetensors"
# measured on these 60 scenes of the models' own test split (1-5 objects, varied sizes, backgrounds and
# noise; beam 3): soft BLEU-4 0.931, CIDEr-D 7.84, grounding 0.971; hard BLEU-4 0.898, CIDEr-D 7.66,
# grounding 0.983 (expected context, the default)
BLEU4_SOFT, CIDER_SOFT, GROUNDING_SOFT = 0.8, 7.0, 0.9
BLEU4_HARD, GROUNDING_HARD = 0.8, 0.9
#: the hard model's glimpses: the share of words whose largest attention weight exceeds 0.5
SHARP_GLIMPSES = 0.95

pytestmark = [
    pytest.mark.skipif(not BUNDLED_MODEL.exists(), reason="bundled caption model not trained"),
    pytest.mark.usefixtures("one_thread"),
]


def _held_out_scores(path: Path, scenes: int = 60) -> dict[str, float]:
    """Scores of the model file on held-out synthetic test scenes (beam 3, decoded captions)."""
    pytest.importorskip("pycocoevalcap", reason="caption scores need pycocoevalcap")
    from vlattn_caption.task import CaptionEvalOptions

    from vlattn.checkpoint import load_model

    loaded = load_model(path, expect_task="caption")
    task = loaded.task
    task.config.synthetic_test = scenes  # type: ignore[attr-defined]
    options = CaptionEvalOptions(split="test", beam_size=3)
    data = task.eval_data(None, options)
    batch = task.collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        return task.evaluate(loaded.model, [batch], options)


def test_bundled_files_are_small() -> None:
    for path in WEIGHTS_DIR.glob("*.safetensors"):
        assert path.stat().st_size < 5 * 2**20, path


def test_bundled_model_describes_held_out_scenes() -> None:
    scores = _held_out_scores(BUNDLED_MODEL)
    assert scores["bleu4"] > BLEU4_SOFT, scores
    assert scores["cider_d"] > CIDER_SOFT, scores
    assert scores["grounding"] > GROUNDING_SOFT, scores


@pytest.mark.skipif(not HARD_MODEL.exists(), reason="bundled hard-attention model not trained")
def test_bundled_hard_attention_model_describes_held_out_scenes() -> None:
    scores = _held_out_scores(HARD_MODEL)
    assert scores["bleu4"] > BLEU4_HARD and scores["grounding"] > GROUNDING_HARD, scores


@pytest.mark.skipif(not HARD_MODEL.exists(), reason="bundled hard-attention model not trained")
def test_bundled_hard_attention_model_takes_one_sharp_glimpse_per_word() -> None:
    captioner = Captioner.load(HARD_MODEL)
    records = synthetic_records("test", 20, seed=0, image_size=captioner.image_size)
    peaks = []
    for mode in (None, "argmax"):
        for words, _, attention in captioner.caption_images([r.load() for r in records], hard_decoding=mode):
            weights = torch.as_tensor(attention).reshape(len(words), -1)  # [words, L]
            peaks += weights.max(dim=1).values.tolist()
    assert sum(p > 0.5 for p in peaks) >= SHARP_GLIMPSES * len(peaks)


def test_captioner_names_the_objects_of_simple_scenes() -> None:
    captioner = Captioner.load()
    records = [
        r for r in synthetic_records("test", 60, seed=0, image_size=captioner.image_size) if len(r.objects) == 1
    ][:15]
    captions = captioner.caption_images([r.load() for r in records], beam_size=3)
    exact = sum(words in r.captions for (words, _, _), r in zip(captions, records, strict=True))
    assert exact >= len(records) - 2, [" ".join(words) for words, _, _ in captions]


def test_cli_uses_the_bundled_model_by_default(tmp_path: Path) -> None:
    from vlattn.cli import build_cli

    record = synthetic_records("test", 1, seed=0, image_size=48)[0]
    path = tmp_path / "scene.png"
    record.load().resize((300, 300)).save(path)
    result = CliRunner().invoke(build_cli(), ["caption", str(path)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split()[0] in ("a", "there")


def test_the_bundled_model_names_every_object_of_a_five_object_scene() -> None:
    from vlattn_caption import synthetic
    from vlattn_caption.records import synthetic_records as records

    captioner = Captioner.load()
    assert captioner.max_len >= 32  # the default caption length is the model's, long enough for five objects
    style = synthetic.SceneStyle(objects=(5, 5))
    scenes = [r for r in records("test", 12, 1003, captioner.image_size, style) if len(r.objects) == 5][:6]
    captions = captioner.caption_images([r.load() for r in scenes], beam_size=3)
    shapes = set(synthetic.SHAPES)
    named = [sum(w in shapes for w in words) for words, _, _ in captions]
    assert sum(n == 5 for n in named) >= len(scenes) - 1, named
