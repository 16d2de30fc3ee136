"""A tiny regression task for trainer tests (registered in-process, never installed)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from vlattn import hookimpl
from vlattn.config import option
from vlattn.registry import TaskSpec
from vlattn.task import DataSplits, Task


@dataclass
class RegressionConfig:
    n: int = option(64, help="examples")
    dim: int = option(4, help="input size")
    dropout: float = option(0.0, help="dropout before the output")
    nan_at_step: int = option(0, help="return a NaN loss at this training step (0 = never)")
    with_val: bool = option(True, help="have a validation split")
    flat_metric: bool = option(False, help="report a validation 'score' that never improves")
    fail_at_step: int = option(0, help="raise RuntimeError in training_step at this call (0 = never)")


@dataclass
class RegressionEvalOptions:
    scale: float = option(1.0, help="multiply the reported loss by this")


class RegressionTask(Task):
    """Fit y = x . w with a small MLP."""

    Config = RegressionConfig
    EvalOptions = RegressionEvalOptions
    trainer_defaults: ClassVar[dict[str, int]] = {"epochs": 2, "batch_size": 8, "log_every": 1}

    evaluations: ClassVar[int] = 0  # evaluate() calls, over all instances

    def __init__(self, config: RegressionConfig) -> None:
        super().__init__(config)
        self.calls = 0

    def setup_data(self) -> DataSplits:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.config.n, self.config.dim, generator=g)
        y = x @ torch.arange(1.0, self.config.dim + 1) + 0.1 * torch.randn(self.config.n, generator=g)
        data = TensorDataset(x, y)
        return DataSplits(data, TensorDataset(x[:16], y[:16]) if self.config.with_val else None)

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(self.config.dim, 8), nn.Tanh(), nn.Dropout(self.config.dropout), nn.Linear(8, 1))

    def training_step(self, model: nn.Module, batch: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        self.calls += 1
        if self.config.fail_at_step and self.calls >= self.config.fail_at_step:
            raise RuntimeError(f"task bug at call {self.calls}")
        x, y = batch
        loss = nn.functional.mse_loss(model(x).squeeze(-1), y)
        if self.config.nan_at_step and self.calls >= self.config.nan_at_step:
            loss = loss * float("nan")
        return loss, {"calls": float(self.calls)}

    def evaluate(self, model: nn.Module, batches: Iterable[list[Tensor]], options: object = None) -> dict[str, float]:
        RegressionTask.evaluations += 1
        total, n = 0.0, 0
        for x, y in batches:
            total += float(nn.functional.mse_loss(model(x).squeeze(-1), y, reduction="sum"))
            n += len(y)
        metrics = {"loss": total / n * (options.scale if options is not None else 1.0)}
        if self.config.flat_metric:
            metrics["score"] = 1.0
        return metrics


class UnfinishedTask(Task):
    """A task that forgot ``training_step`` and ``evaluate``."""

    Config = RegressionConfig

    def setup_data(self) -> DataSplits:
        raise AssertionError("never reached: the class is refused first")

    def build_model(self) -> nn.Module:
        raise AssertionError("never reached")


class ToyPlugin:
    """Registers the ``toy-regression`` task and records trainer events in ``events``."""

    events: ClassVar[list[tuple[str, object]]] = []

    @staticmethod
    @hookimpl
    def on_train_start(run_dir: object, config: dict[str, object]) -> None:
        ToyPlugin.events.append(("start", config["task"]))

    @staticmethod
    @hookimpl
    def on_metrics(run_dir: object, step: int, metrics: dict[str, float]) -> None:
        ToyPlugin.events.append(("metrics", sorted(metrics)[0]))

    @staticmethod
    @hookimpl
    def on_checkpoint(run_dir: object, step: int, path: object, is_best: bool) -> None:
        ToyPlugin.events.append(("checkpoint", (step, is_best)))

    @staticmethod
    @hookimpl
    def on_train_end(run_dir: object, step: int, reason: str) -> None:
        ToyPlugin.events.append(("end", reason))

    @staticmethod
    @hookimpl
    def register_tasks(register: Callable[[TaskSpec], None]) -> None:
        register(TaskSpec("toy-regression", RegressionTask, summary="toy regression for tests"))
        register(TaskSpec("toy-unfinished", UnfinishedTask, summary="a task missing methods"))
