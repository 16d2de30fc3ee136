"""Synthetic scenes, caption corpora, vocabulary and batching of the caption plugin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from vlattn_caption import synthetic
from vlattn_caption.records import CaptionDataError, read_records, synthetic_records, write_synthetic
from vlattn_caption.vocab import Vocabulary, tokenize


def test_scenes_are_deterministic_and_split_dependent() -> None:
    a = synthetic.make_scene(3, "train", 7)
    b = synthetic.make_scene(3, "train", 7)
    c = synthetic.make_scene(3, "val", 7)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.captions == b.captions
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_scene_objects_are_drawn_inside_their_boxes() -> None:
    for i in range(30):
        scene = synthetic.make_scene(0, "train", i, image_size=64)
        assert 1 <= len(scene.objects) <= 3
        pixels = np.asarray(scene.image).astype(int)
        kinds = {(o.colour, o.shape) for o in scene.objects}
        assert len(kinds) == len(scene.objects)  # colour + shape names an object uniquely
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            cx, cy = int(obj.centre[0]), int(obj.centre[1])
            # every shape covers its box centre with its own colour
            assert np.abs(pixels[cy, cx] - np.array(synthetic.COLOURS[obj.colour])).max() < 5


def test_captions_name_objects_left_to_right_with_relations() -> None:
    seen_counts = set()
    for i in range(60):
        scene = synthetic.make_scene(1, "train", i)
        canonical = scene.captions[0]
        seen_counts.add(len(scene.objects))
        xs = [o.centre[0] for o in scene.objects]
        assert xs == sorted(xs)
        positions = [canonical.index(o.phrase) for o in scene.objects]
        assert positions == sorted(positions)
        if len(scene.objects) >= 2:
            a, b = scene.objects[:2]
            assert f"{a.phrase} {synthetic.relation(a, b)} a {b.phrase}" in canonical
    assert seen_counts == {1, 2, 3}


def test_relation_follows_geometry() -> None:
    def obj(x: int, y: int) -> synthetic.SceneObject:
        return synthetic.SceneObject("red", "circle", "small", (x, y, x + 10, y + 10))

    assert synthetic.relation(obj(0, 0), obj(40, 5)) == "left of"
    assert synthetic.relation(obj(40, 5), obj(0, 0)) == "right of"
    assert synthetic.relation(obj(5, 0), obj(0, 40)) == "above"
    assert synthetic.relation(obj(0, 40), obj(5, 0)) == "below"


def test_peak_in_box() -> None:
    grid = np.zeros((4, 4))
    grid[1, 2] = 1.0  # cell centre (40, 24) in a 64-pixel image
    assert synthetic.peak_in_box(grid, (32, 16, 48, 32), 64)
    assert not synthetic.peak_in_box(grid, (0, 0, 16, 16), 64)


def test_write_and_read_back_karpathy_json(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "scenes", counts={"train": 3, "val": 2, "test": 1}, seed=5, image_size=48)
    data = json.loads(path.read_text())
    assert len(data["images"]) == 6 and data["seed"] == 5
    records = read_records(tmp_path / "scenes")
    assert [r.split for r in records].count("val") == 2
    memory = synthetic_records("val", 2, seed=5, image_size=48)
    for on_disk, in_memory in zip([r for r in records if r.split == "val"], memory, strict=True):
        assert on_disk.captions == in_memory.captions
        assert on_disk.objects == in_memory.objects
        assert np.array_equal(np.asarray(on_disk.load()), in_memory.pixels)


def test_karpathy_restval_and_paths(tmp_path: Path) -> None:
    Image.new("RGB", (5, 5)).save(tmp_path / "x.jpg")
    (tmp_path / "d.json").write_text(
        json.dumps(
            {
                "images": [
                    {"filename": "x.jpg", "split": "restval", "sentences": [{"raw": "A dog runs."}]},
                ]
            }
        )
    )
    (rec,) = read_records(tmp_path / "d.json")
    assert rec.split == "train" and rec.captions == [["a", "dog", "runs"]] and rec.path == tmp_path / "x.jpg"


def test_jsonl_and_csv_group_by_image(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text(
        '{"image": "a.jpg", "caption": "One cat", "split": "val"}\n{"image": "a.jpg", "caption": "a cat"}\n'
    )
    (rec,) = read_records(tmp_path / "c.jsonl")
    assert rec.captions == [["one", "cat"], ["a", "cat"]] and rec.split == "val"
    (tmp_path / "c.csv").write_text("image,caption\nb.jpg,Two dogs\nc.jpg,a bird\n")
    recs = read_records(tmp_path / "c.csv")
    assert [r.name for r in recs] == ["b.jpg", "c.jpg"] and all(r.split in ("train", "val", "test") for r in recs)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", "{not json", "cannot be parsed"),
        ("list.json", "[1, 2]", "not a Karpathy"),
        ("rows.csv", "image,text\na.jpg,hello\n", "needs 'image' and 'caption'"),
        ("data.txt", "hello", "unknown caption file type"),
    ],
)
def test_bad_dataset_files(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(CaptionDataError, match=message):
        read_records(tmp_path / name)


def test_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(CaptionDataError, match="not found"):
        read_records(tmp_path / "none.json")


def test_vocabulary_min_freq_unk_and_round_trip() -> None:
    captions = [tokenize("a red circle"), tokenize("a blue circle"), tokenize("A red Square!")]
    vocab = Vocabulary.build(captions, min_freq=2)
    assert vocab.words[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert set(vocab.words[4:]) == {"a", "red", "circle"}
    ids = vocab.encode(["a", "blue", "circle"])
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id and ids[2] == vocab.unk_id
    assert vocab.decode(ids) == ["a", "<unk>", "circle"]
    assert vocab.decode([*ids, 5, 6]) == ["a", "<unk>", "circle"]  # stops at <end>
    assert Vocabulary.from_json(json.loads(json.dumps(vocab.to_json()))).words == vocab.words
    assert len(vocab.encode(["a"] * 30, max_len=5)) == 7


def test_collate_pads_and_keeps_references() -> None:
    import torch
    from vlattn_caption.dataset import CaptionEvaluationSet, CaptionTrainingSet, collate

    records = synthetic_records("train", 4, seed=2, image_size=32)
    vocab = Vocabulary.build(c for r in records for c in r.captions)
    train = CaptionTrainingSet(records, vocab, 32, max_len=20)
    assert len(train) == 8  # two captions per scene
    batch = collate([train[i] for i in range(len(train))])
    assert batch["images"].shape == (8, 3, 32, 32) and batch["images"].dtype == torch.uint8
    lengths = batch["lengths"]
    assert batch["captions"].shape == (8, int(lengths.max()))
    for row, n in enumerate(lengths.tolist()):
        assert batch["captions"][row, n - 1] == vocab.end_id
        assert (batch["captions"][row, n:] == vocab.pad_id).all()
    ev = collate([CaptionEvaluationSet(records, vocab, 48, 20)[i] for i in range(2)])
    assert ev["images"].shape == (2, 3, 48, 48)
    assert ev["references"][0] == records[0].captions and ev["objects"][0] == records[0].objects


TINY = {"image_size": 32, "grid": 4, "cnn_channels": 8, "embed_dim": 8, "hidden_dim": 16, "eval_beam_size": 2}
TINY_TRAINER = {"epochs": 1, "batch_size": 4, "quiet": True, "tensorboard": False, "device": "cpu"}


def test_train_on_written_karpathy_json_and_jsonl(tmp_path: Path) -> None:
    """The common trainer reads a dataset.json from ``vlattn caption-data`` and a JSONL of pairs."""
    pytest.importorskip("pycocoevalcap", reason="validation scores need pycocoevalcap")
    from vlattn.train import fit

    data = write_synthetic(tmp_path / "scenes", counts={"train": 6, "val": 2, "test": 0}, seed=1, image_size=32)
    result = fit("caption", {"data": str(data), **TINY}, TINY_TRAINER, tmp_path / "run-json")
    assert result.best_path is not None and result.best_path.exists()
    assert {"bleu4", "cider_d", "rouge_l", "grounding"} <= set(result.metrics)  # boxes come from the JSON

    rows = [
        {"image": f"images/{img['filename']}", "caption": s["raw"], "split": img["split"]}
        for img in json.loads(data.read_text())["images"]
        for s in img["sentences"]
    ]
    jsonl = tmp_path / "scenes" / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = fit("caption", {"data": str(jsonl), **TINY}, TINY_TRAINER, tmp_path / "run-jsonl")
    assert result.best_path is not None and "grounding" not in result.metrics  # plain pairs carry no boxes
    assert result.metrics["images"] == 2


def test_training_script_uses_the_common_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runpy
    import sys

    pytest.importorskip("pycocoevalcap", reason="validation scores need pycocoevalcap")
    script = Path(__file__).resolve().parents[3] / "scripts" / "train_caption_synthetic.py"
    out, run_dir = tmp_path / "model.safetensors", tmp_path / "run"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            str(script),
            "--out",
            str(out),
            "--run-dir",
            str(run_dir),
            "--epochs",
            "1",
            "--sharpen-epochs",
            "1",
            "--train",
            "8",
            "--val",
            "2",
            "--batch-size",
            "4",
            "--options",
            json.dumps(TINY),
        ],
    )
    runpy.run_path(str(script), run_name="__main__")
    first = json.loads((run_dir / "language" / "config.json").read_text())
    assert first["task"] == "caption" and first["trainer"]["schedule"] == "cosine"
    second = json.loads((run_dir / "sharpen" / "config.json").read_text())["task_config"]
    assert second["init_from"] == str(run_dir / "language" / "best.safetensors")
    assert second["context_dropout"] > 0 and second["attention_entropy"] > 0
    assert out.read_bytes() == (run_dir / "sharpen" / "best.safetensors").read_bytes()


def _saved_tiny_model(path: Path) -> tuple[Any, Any]:
    """A tiny untrained soft-attention caption model saved at ``path``; returns ``(task, config)``."""
    from vlattn_caption.task import CaptionConfig, CaptionTask

    from vlattn.checkpoint import save_model
    from vlattn.config import from_mapping, to_dict

    config = from_mapping(CaptionConfig, {"synthetic_train": 4, "synthetic_val": 1, **TINY})
    task = CaptionTask(config)
    task.setup_data()
    save_model(path, task.build_model(), task_name="caption", config=to_dict(config), artifacts=task.artifacts())
    return task, config


def test_init_from_copies_weights_and_vocabulary(tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from vlattn_caption.task import CaptionConfig, CaptionTask

    from vlattn.config import from_mapping, to_dict
    from vlattn.errors import ModelFileError

    path = tmp_path / "m.safetensors"
    task, config = _saved_tiny_model(path)
    again = CaptionTask(
        from_mapping(
            CaptionConfig, {**to_dict(config), "init_from": str(path), "synthetic_train": 2, "synthetic_seed": 9}
        )
    )
    again.setup_data()
    assert again.vocab is not None and task.vocab is not None and again.vocab.words == task.vocab.words
    saved = load_file(str(path))
    assert all(torch_equal(saved[k], v) for k, v in again.build_model().state_dict().items())
    wider = CaptionTask(from_mapping(CaptionConfig, {**to_dict(config), "init_from": str(path), "hidden_dim": 24}))
    wider.setup_data()
    with pytest.raises(ModelFileError, match="another architecture"):
        wider.build_model()


def test_a_soft_attention_model_starts_a_hard_attention_one(tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from vlattn_caption.task import CaptionConfig, CaptionTask

    from vlattn.config import from_mapping, to_dict

    path = tmp_path / "soft.safetensors"
    _, config = _saved_tiny_model(path)
    hard = CaptionTask(
        from_mapping(CaptionConfig, {**to_dict(config), "init_from": str(path), "attention": "hard-spatial"})
    )
    hard.setup_data()
    state = hard.build_model().state_dict()
    saved = load_file(str(path))
    assert any(k.startswith("reinforce.") for k in state) and not any(k.startswith("reinforce.") for k in saved)
    assert all(torch_equal(saved[k], state[k]) for k in saved)


def torch_equal(a: object, b: object) -> bool:
    import torch

    return bool(torch.equal(a, b))  # type: ignore[arg-type]
