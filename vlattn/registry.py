"""Spec dataclasses for what plugins register, and the name registry with helpful errors.

Nothing here imports torch: a spec's factory is a dotted string (``"package.module:Name"``) or
a callable, resolved only when the mechanism or task is actually used.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from vlattn.errors import DuplicateNameError, PluginFactoryError, UnknownNameError

Factory = str | Callable[..., Any]


def resolve(factory: Factory) -> Any:
    """Import ``"package.module:attr"`` (or return a callable unchanged).

    Raises :class:`PluginFactoryError` (one line: what failed and why) when the string is malformed,
    the module cannot be imported or has no such attribute.
    """
    if not isinstance(factory, str):
        return factory
    module_name, sep, attr = factory.partition(":")
    if not sep or not attr or not module_name:
        raise PluginFactoryError(f"factory {factory!r} must look like 'package.module:Name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise PluginFactoryError(f"factory {factory!r} cannot be imported: {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginFactoryError(f"factory {factory!r}: {module_name} has no attribute {attr!r}") from None
    return obj


def _load(spec: AttentionSpec | TaskSpec, kind: str) -> Any:
    try:
        return resolve(spec.factory)
    except PluginFactoryError as exc:
        by = f" of plugin {spec.plugin!r}" if spec.plugin else ""
        raise PluginFactoryError(f"{kind} {spec.name!r}{by}: {exc}") from exc.__cause__


@dataclass(frozen=True)
class AttentionSpec:
    """An attention mechanism a plugin offers.

    Attributes:
        name: the name models and ``--attention`` options use (``"additive"``).
        factory: ``"module:Class"`` or callable; called as ``factory(query_dim, key_dim, **options)``.
        summary: one line shown by ``vlattn list``.
        formula: the score or weighting formula in plain text, shown by ``vlattn list --json`` and the
            docs (``"score = v^T tanh(W q + U k)"``); optional.
        paper: a short citation of the paper that introduced it (``"Bahdanau et al. 2015"``); optional.
        contract: settings of :func:`vlattn.testing.check_mechanism` for this mechanism, where it
            departs from the common contract on purpose: ``{"options": {...}}`` it needs to keep
            it, ``{"partial_weights": True}`` (weights may sum below 1), ``{"per_step_query": False}``,
            ``{"other_value_size": False}``; optional.
        plugin: filled in by the registry: the plugin that registered it.
    """

    name: str
    factory: Factory
    summary: str = ""
    formula: str = ""
    paper: str = ""
    contract: Mapping[str, Any] = field(default_factory=dict)
    plugin: str = ""

    def load(self) -> Callable[..., Any]:
        """Return the factory, importing it if it is a dotted string (:class:`PluginFactoryError`
        naming the mechanism and its plugin when that fails)."""
        return _load(self, "attention mechanism")


@dataclass(frozen=True)
class TaskSpec:
    """A trainable task a plugin offers.

    Attributes:
        name: the name used by ``vlattn train NAME`` and stored in model files.
        factory: ``"module:TaskClass"`` or a callable returning a :class:`vlattn.task.Task` subclass.
        summary: one line shown by ``vlattn list``.
        plugin: filled in by the registry.
    """

    name: str
    factory: Factory
    summary: str = ""
    plugin: str = ""

    def load(self) -> type[Any]:
        """Return the :class:`vlattn.task.Task` subclass, importing it if needed (:class:`PluginFactoryError`
        naming the task and its plugin when that fails)."""
        return _load(self, "task")


SpecT = TypeVar("SpecT", AttentionSpec, TaskSpec)


@dataclass
class Registry(Generic[SpecT]):
    """Names to specs for one kind of thing (``"attention mechanism"``, ``"task"``)."""

    kind: str
    _specs: dict[str, SpecT] = field(default_factory=dict)

    def add(self, spec: SpecT, plugin: str) -> None:
        """Register ``spec`` on behalf of ``plugin``; a name taken by another plugin is an error."""
        if not spec.name or not isinstance(spec.name, str):
            raise ValueError(f"plugin {plugin!r} registered a {self.kind} without a name")
        if spec.name in self._specs:
            other = self._specs[spec.name].plugin
            raise DuplicateNameError(
                f"{self.kind} {spec.name!r} is registered twice: by plugin {other!r} and by "
                f"plugin {plugin!r}; uninstall one or disable it with VLATTN_PLUGINS"
            )
        self._specs[spec.name] = replace(spec, plugin=plugin)

    def get(self, name: str) -> SpecT:
        """Return the spec called ``name`` or raise :class:`UnknownNameError` with suggestions."""
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """The one-line error for an unknown ``name``, with close matches when there are any."""
        close = difflib.get_close_matches(name, list(self._specs), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(self._specs)) or "none"
        return f"unknown {self.kind} {name!r}{hint} (known: {known})"

    def discard_plugin(self, plugin: str) -> list[str]:
        """Withdraw every name ``plugin`` registered (it failed); returns the names withdrawn."""
        gone = [name for name, spec in self._specs.items() if spec.plugin == plugin]
        for name in gone:
            del self._specs[name]
        return gone

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[SpecT]:
        return iter(self._specs[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._specs)
