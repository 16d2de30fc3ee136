"""The ``draw`` task: config checks, data, training step, evaluation, model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from vlattn_draw.data import DrawDataError, TensorImages, load_binarized_mnist
from vlattn_draw.task import DrawConfig, DrawEvalOptions, DrawTask

from vlattn.checkpoint import load_model, save_model
from vlattn.config import ConfigError, from_mapping, to_dict

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"
MNIST = SHARED / "mnist" / "binarized_mnist.npz"
TINY = {"steps": 3, "enc_size": 16, "dec_size": 16, "z_size": 4, "read_n": 2, "write_n": 3}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(12):
        array = (rng.random((20, 24, 3)) * 255).astype(np.uint8)
        Image.fromarray(array).save(tmp_path / f"img{i:02d}.png")
    return tmp_path


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": 0}, "steps must be >= 1"),
        ({"read_n": -1}, "read_n must be >= 1"),
        ({"data": "folder", "binarize": "none"}, "continuous_bernoulli"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"likelihood": "gaussian"}, "likelihood"),
    ],
)
def test_bad_options_are_config_errors(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping(DrawConfig, values)


def test_folder_of_rgb_images_trains_evaluates_and_round_trips(folder: Path, tmp_path: Path) -> None:
    config = from_mapping(
        DrawConfig,
        {
            "data": "folder",
            "data_path": str(folder),
            "image_size": 16,
            "rgb": True,
            "binarize": "none",
            "likelihood": "continuous_bernoulli",
            "val_fraction": 0.25,
            **TINY,
        },
    )
    task = DrawTask(config)
    splits = task.setup_data()
    assert len(splits.train) == 9 and len(splits.val) == 3
    assert task.image_shape == (3, 16, 16)
    model = task.build_model()
    batch = task.collate([splits.train[i] for i in range(4)])
    assert batch.shape == (4, 3, 16, 16)
    loss, logs = task.training_step(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert float(logs["reconstruction"]) + float(logs["kl"]) == pytest.approx(float(loss.detach()), rel=1e-5)
    loss.backward()

    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, [batch[:2], batch[2:]], DrawEvalOptions(iw_samples=4, iw_chunk=2))
    assert metrics["images"] == 4
    assert metrics["nll_bound"] == pytest.approx(metrics["reconstruction"] + metrics["kl"])
    assert metrics["iw_samples"] == 4 and np.isfinite(metrics["iw_nll"])

    path = save_model(
        tmp_path / "m.safetensors", model, task_name="draw", config=to_dict(config), artifacts=task.artifacts()
    )
    loaded = load_model(path)
    assert isinstance(loaded.task, DrawTask) and loaded.task.image_shape == (3, 16, 16)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value)


def test_eval_data_reads_a_folder_at_the_models_size(folder: Path) -> None:
    task = DrawTask(from_mapping(DrawConfig, {"data": "folder", "image_size": 8, "binarize": "static", **TINY}))
    task.load_artifacts({"image_shape": [1, 8, 8]})
    data = task.eval_data(str(folder), None)
    assert len(data) == 12
    assert data[0].shape == (1, 8, 8)
    assert set(torch.unique(data[0]).tolist()) <= {0.0, 1.0}


def test_missing_data_gives_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DrawDataError, match="not found"):
        load_binarized_mnist(tmp_path / "nope.npz", "train")
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(DrawDataError, match="not a readable"):
        load_binarized_mnist(tmp_path / "bad.npz", "train")
    task = DrawTask(from_mapping(DrawConfig, {"data": "folder", "data_path": str(tmp_path / "empty")}))
    with pytest.raises(DrawDataError, match="not found"):
        task.setup_data()


def test_binarisations() -> None:
    grey = torch.full((50, 1, 4, 4), 128, dtype=torch.uint8)
    assert torch.equal(TensorImages(grey, "threshold").images, torch.ones(50, 1, 4, 4))
    static = TensorImages(grey, "static", seed=3)
    assert torch.equal(static[0], static[0]) and set(torch.unique(static.images).tolist()) == {0.0, 1.0}
    dynamic = TensorImages(grey, "dynamic")
    draws = torch.stack([dynamic[0] for _ in range(20)])
    assert set(torch.unique(draws).tolist()) == {0.0, 1.0}
    assert not all(torch.equal(draws[0], d) for d in draws[1:])


@pytest.mark.skipif(not MNIST.is_file(), reason="shared binarized MNIST not available")
def test_binarized_mnist_splits() -> None:
    task = DrawTask(from_mapping(DrawConfig, {"data_path": str(MNIST), **TINY}))
    splits = task.setup_data()
    assert len(splits.train) == 50000 and len(splits.val) == 10000
    test = task.eval_data(None, None)
    assert len(test) == 10000
    assert test[0].shape == (1, 28, 28)
    assert set(torch.unique(test.images[:100]).tolist()) == {0.0, 1.0}
