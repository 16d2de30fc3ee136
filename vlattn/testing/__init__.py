"""Contract tests for plugin authors: the promises every mechanism and task must keep.

>>> from vlattn.testing import check_mechanism, check_task
>>> check_mechanism("cosine")                                          # doctest: +SKIP
>>> check_task("find-marker", {"train_size": 64, "val_size": 32})      # doctest: +SKIP

Both raise :class:`ContractViolation` (an ``AssertionError``, so pytest shows it as a failure)
with one line naming the broken promise. The built-in mechanisms and tasks are tested with the
same functions. ``vlattn plugins --check`` runs the cheap part on every installed plugin.
"""

from __future__ import annotations

from vlattn.testing.mechanism import (
    ALL_CHECKS,
    CHEAP_CHECKS,
    ContractViolation,
    MechanismCase,
    check_mechanism,
    mechanism_case,
)
from vlattn.testing.task import TaskReport, check_task

__all__ = [
    "ALL_CHECKS",
    "CHEAP_CHECKS",
    "ContractViolation",
    "MechanismCase",
    "TaskReport",
    "check_mechanism",
    "check_task",
    "mechanism_case",
]
