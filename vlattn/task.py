"""The :class:`Task` interface: everything the common trainer needs to train one kind of model.

A plugin subclasses :class:`Task`, declares its options as a ``Config`` dataclass (see
:func:`vlattn.config.option`) and registers the class with a :class:`vlattn.registry.TaskSpec`.

Life cycle, as driven by ``vlattn train`` and ``vlattn eval``::

    task = TaskClass(config)
    splits = task.setup_data()           # training only; may build a vocabulary
    model = task.build_model()           # uses what setup_data (or load_artifacts) learned
    loss, logs = task.training_step(model, batch)
    metrics = task.evaluate(model, batches)
    artifacts = task.artifacts()         # JSON saved inside the model file (vocabulary ...)

    # later, from a model file:
    task = TaskClass(config); task.load_artifacts(artifacts); model = task.build_model()
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset


@dataclass
class DataSplits:
    """The datasets of a training run. ``val`` may be ``None`` (then no validation runs)."""

    train: Dataset[Any]
    val: Dataset[Any] | None = None


@dataclass
class EmptyOptions:
    """The evaluation options of a task that has none."""


class Task(abc.ABC):
    """Base class of every trainable task.

    Class attributes:
        Config: dataclass of the task's options (model and data), shown by ``vlattn train TASK --help``.
        EvalOptions: dataclass of extra ``vlattn eval`` options (``--iw-samples`` ...).
        trainer_defaults: trainer settings this task prefers (``{"epochs": 10, "lr": 1e-3}``);
            the user's options still win.
        best_metric: ``(name, "max"|"min")``: the validation metric that picks ``best.safetensors``
            and drives early stopping unless the user names another.
    """

    Config: ClassVar[type[Any]]
    EvalOptions: ClassVar[type[Any]] = EmptyOptions
    trainer_defaults: ClassVar[Mapping[str, Any]] = {}
    best_metric: ClassVar[tuple[str, Literal["max", "min"]]] = ("loss", "min")

    def __init__(self, config: Any) -> None:
        self.config = config

    # -- data ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def setup_data(self) -> DataSplits:
        """Load the training data (and build vocabularies); return the train / validation sets."""

    def collate(self, items: list[Any]) -> Any:
        """Turn a list of dataset items into a batch (default: ``torch``'s default collation)."""
        from torch.utils.data import default_collate

        return default_collate(items)

    def eval_data(self, data: str | None, options: Any) -> Dataset[Any]:
        """The dataset ``vlattn eval`` scores: ``data`` is the user's ``--data`` value or ``None``
        for the task's default evaluation split. Called after :meth:`load_artifacts`."""
        if data is not None:
            raise NotImplementedError(f"task {type(self).__name__} does not take --data")
        splits = self.setup_data()
        if splits.val is None:
            raise NotImplementedError(f"task {type(self).__name__} has no evaluation split")
        return splits.val

    # -- model -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model for ``self.config`` (and the loaded artifacts)."""

    @abc.abstractmethod
    def training_step(
        self, model: torch.nn.Module, batch: Any
    ) -> tuple[torch.Tensor, Mapping[str, float | torch.Tensor]]:
        """Loss of one batch (a scalar to minimise, mean over the batch) and extra values to log.

        ``batch`` is already on the model's device. Extra values are averaged over the log
        interval, so log per-example means (``{"kl": kl.detach()}``).
        """

    @abc.abstractmethod
    def evaluate(self, model: torch.nn.Module, batches: Iterable[Any], options: Any = None) -> dict[str, float]:
        """Metrics over a whole evaluation set (model already in eval mode under ``no_grad``).

        ``batches`` yields collated batches on the model's device; ``options`` is always an instance
        of ``EvalOptions``: the user's for ``vlattn eval``, :meth:`validation_options` during training.
        """

    def validation_options(self) -> Any:
        """The ``EvalOptions`` of the validation runs during training (default: ``EvalOptions()``).

        Override when validation should differ from ``vlattn eval``'s defaults, e.g. a smaller beam
        taken from the task's config so that validating every epoch stays cheap.
        """
        return self.EvalOptions()

    # -- what a model file carries besides weights ------------------------------------------------
    def artifacts(self) -> dict[str, Any]:
        """JSON-ready state the model needs at inference time (vocabulary, normalisation ...)."""
        return {}

    def load_artifacts(self, artifacts: Mapping[str, Any]) -> None:
        """Restore what :meth:`artifacts` returned, before :meth:`build_model` is called."""
        return None


def task_class_problems(task_cls: Any) -> list[str]:
    """What keeps ``task_cls`` from being a usable :class:`Task` (empty when nothing does).

    Checked before a run folder is created, by ``vlattn plugins --check`` and by
    :func:`vlattn.testing.check_task`: a ``Task`` subclass, no abstract method left, ``Config`` and
    ``EvalOptions`` dataclasses, and ``best_metric`` a ``(name, "max" | "min")`` pair.
    """
    import dataclasses
    import inspect

    if not (isinstance(task_cls, type) and issubclass(task_cls, Task)):
        return [f"the factory gave {task_cls!r}, not a subclass of vlattn.task.Task"]
    problems = []
    missing = sorted(getattr(task_cls, "__abstractmethods__", ()))
    if inspect.isabstract(task_cls) and missing:
        problems.append(f"{task_cls.__name__} does not implement {', '.join(missing)}")
    config = getattr(task_cls, "Config", None)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        problems.append(f"{task_cls.__name__}.Config must be a dataclass of the task's options")
    options = getattr(task_cls, "EvalOptions", None)
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        problems.append(f"{task_cls.__name__}.EvalOptions must be a dataclass (EmptyOptions when there are none)")
    metric = getattr(task_cls, "best_metric", None)
    if not (
        isinstance(metric, tuple) and len(metric) == 2 and isinstance(metric[0], str) and metric[1] in ("max", "min")
    ):
        problems.append(f"{task_cls.__name__}.best_metric must be (metric name, 'max' or 'min'), got {metric!r}")
    return problems
