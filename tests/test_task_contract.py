"""The task contract kit (``vlattn.testing.check_task``) on every built-in task, and the mistakes
it catches in a task a plugin author writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import Tensor, nn

from tests.plugins.text.test_text_models import make_corpus
from tests.toy_tasks import RegressionConfig, RegressionTask
from vlattn.testing import ContractViolation, check_task

pytestmark = pytest.mark.usefixtures("one_thread")


def test_text_classifier_keeps_the_task_contract(tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "two.txt", {"pos": ["good", "great"], "neg": ["bad", "awful"]}, n=40)
    config = {"data": [str(data)], "split": "random", "embed_dim": 8, "hidden_size": 8}
    report = check_task("text-classifier", config, steps=3)
    assert report.steps == 3 and "accuracy" in report.loaded_metrics


def test_captioner_keeps_the_task_contract() -> None:
    config = {
        "synthetic_train": 6,
        "synthetic_val": 3,
        "image_size": 32,
        "grid": 4,
        "cnn_channels": 8,
        "embed_dim": 8,
        "hidden_dim": 16,
    }
    for attention in ("soft-spatial", "hard-spatial"):
        report = check_task("caption", {**config, "attention": attention}, steps=2)
        assert "bleu4" in report.loaded_metrics


def test_draw_keeps_the_task_contract(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(tmp_path / f"img{i:02d}.png")
    config = {
        "data": "folder",
        "data_path": str(tmp_path),
        "image_size": 8,
        "steps": 3,
        "enc_size": 8,
        "dec_size": 8,
        "z_size": 2,
        "binarize": "static",
    }
    # DRAW's bound samples z with the global generator: two evaluations differ by sampling noise
    report = check_task("draw", config, steps=2, deterministic_eval=False)
    assert "nll_bound" in report.loaded_metrics


class DetachedLoss(RegressionTask):
    def training_step(self, model: nn.Module, batch: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        loss, logs = super().training_step(model, batch)
        return loss.detach(), logs


class PerExampleLoss(RegressionTask):
    def training_step(self, model: nn.Module, batch: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        return (model(x).squeeze(-1) - y) ** 2, {}


class ForgetsArtifacts(RegressionTask):
    """Learns a target scale from the data but does not save it with the model."""

    def setup_data(self):  # type: ignore[no-untyped-def]
        splits = super().setup_data()
        self.scale = 3.0
        return splits

    def evaluate(self, model, batches, options=None):  # type: ignore[no-untyped-def]
        metrics = super().evaluate(model, batches, options)
        return {"loss": metrics["loss"] * getattr(self, "scale", 1.0)}


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (DetachedLoss, "loss has no gradient"),
        (PerExampleLoss, "loss must be a scalar tensor"),
        (ForgetsArtifacts, "the model loaded from its file scores differently from the trained one"),
    ],
)
def test_the_kit_names_what_a_task_gets_wrong(task: type[RegressionTask], message: str) -> None:
    with pytest.raises(ContractViolation, match=message):
        check_task(task, {"n": 32}, steps=2)


def test_a_correct_task_passes_without_being_registered() -> None:
    report = check_task(RegressionTask, {"n": 32}, steps=2)
    assert report.task == "check-regressiontask" and set(report.loaded_metrics) == {"loss"}
    assert RegressionConfig is RegressionTask.Config
