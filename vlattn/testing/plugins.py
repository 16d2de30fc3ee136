"""``vlattn plugins --check``: import every factory of every plugin and run the cheap contract.

What a plugin author runs before publishing: each registered mechanism is built at small sizes
and put through the shape, weight and mask checks of :mod:`vlattn.testing.mechanism`; each task
class is imported and checked (``Task`` subclass, nothing abstract left, ``Config`` dataclass
with defaults, options that do not clash with the trainer's); the hook mistakes found while
loading are listed too. Nothing is trained and no data is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlattn.errors import VlattnError
from vlattn.plugins import PluginHost, PluginInfo
from vlattn.testing.mechanism import (
    check_mask,
    check_mechanism,
    check_query_sequence,
    check_single_query,
    check_values,
)

SIZE = 8  # query and key size of the mechanisms' checks (equal: dot products need it)


@dataclass
class PluginCheck:
    """The outcome of ``vlattn plugins --check`` for one plugin: what passed, what failed."""

    info: PluginInfo
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def check_mechanism_spec(name: str) -> str:
    """Build ``name`` and run the cheap checks; returns a summary, raises on a broken promise."""
    passed = check_mechanism(
        name, query_dim=SIZE, key_dim=SIZE, checks=(check_single_query, check_query_sequence, check_values, check_mask)
    )
    return f"attention {name}: {len(passed)} checks"


def check_task_spec(name: str) -> str:
    """Import task ``name``, check its class and build its ``vlattn train`` command."""
    from vlattn.cli_train import make_task_command
    from vlattn.config import from_mapping
    from vlattn.train.run import load_task_class

    task_cls = load_task_class(name)
    from_mapping(task_cls.Config, {}, where=f"{name} defaults")
    make_task_command(name)
    return f"task {name}: loads"


def check_plugins(host: PluginHost) -> list[PluginCheck]:
    """Check every plugin ``host`` knows, in name order."""
    results = []
    for info in host.plugin_list():
        result = PluginCheck(info)
        results.append(result)
        if info.error:
            result.failed.append(f"not loaded: {info.error}")
            continue
        result.failed.extend(info.problems)
        for kind, names, check in (
            ("attention", info.attention, check_mechanism_spec),
            ("task", info.tasks, check_task_spec),
        ):
            for name in names:
                try:
                    result.passed.append(check(name))
                except VlattnError as exc:
                    result.failed.append(str(exc))
                except Exception as exc:  # the plugin's own code raised
                    result.failed.append(f"{kind} {name!r}: {type(exc).__name__}: {exc}")
    return results
