"""Loading plugins from the ``vlattn`` entry-point group, each in isolation.

Rules:

* ``VLATTN_PLUGINS=a,b`` loads only the named plugins (entry-point or distribution names);
  ``VLATTN_DISABLE_PLUGINS=a,b`` skips some. Both apply *before* a plugin is imported.
* A plugin that raises on import or while registering is reported (a warning on stderr naming
  its distribution, and its error in ``vlattn plugins``) and skipped; ``VLATTN_STRICT_PLUGINS=1``
  re-raises instead.
* A name registered by two plugins is an error naming both.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from vlattn import hookspecs
from vlattn.errors import PluginLoadError
from vlattn.registry import AttentionSpec, Registry, TaskSpec

if TYPE_CHECKING:
    import click

ENTRY_POINT_GROUP = "vlattn"
ENV_ALLOW = "VLATTN_PLUGINS"
ENV_DISABLE = "VLATTN_DISABLE_PLUGINS"
ENV_STRICT = "VLATTN_STRICT_PLUGINS"


def _env_names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


def strict() -> bool:
    """True when ``VLATTN_STRICT_PLUGINS`` asks for plugin errors to be raised."""
    return os.environ.get(ENV_STRICT, "").lower() not in ("", "0", "false", "no")


@dataclass
class PluginInfo:
    """What ``vlattn plugins`` reports about one plugin."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PluginHost:
    """A pluggy manager plus the registries its plugins filled.

    Most code uses the process-wide instance from :func:`get_host`; tests build their own.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.attention: Registry[AttentionSpec] = Registry("attention mechanism")
        self.tasks: Registry[TaskSpec] = Registry("task")
        self._registered = False

    # -- loading -----------------------------------------------------------------------------
    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Import and register every allowed plugin of the entry-point ``group``."""
        allow, disable = _env_names(ENV_ALLOW), _env_names(ENV_DISABLE) or set()
        for ep in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else None
            names = {ep.name, dist} - {None}
            if (allow is not None and not names & allow) or names & disable:
                continue
            if ep.name in self.infos:
                continue
            info = PluginInfo(ep.name, ep.value, dist, ep.dist.version if ep.dist else None)
            self.infos[ep.name] = info
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the CLI down
                self._fail(info, exc, "failed to load")
                continue
            self._register_module(module, info)

    def add_plugin(self, module: ModuleType | object, name: str) -> None:
        """Register an already-imported plugin object (used by tests and embedding code)."""
        module_name = getattr(module, "__name__", type(module).__name__)
        info = PluginInfo(name, module_name)
        self.infos[name] = info
        self._register_module(module, info)

    def _register_module(self, module: object, info: PluginInfo) -> None:
        try:
            self.pm.register(module, name=info.name)
        except Exception as exc:
            self._fail(info, exc, "could not be registered")
            return
        info.hooks = sorted({c.name for c in (self.pm.get_hookcallers(module) or [])})
        self._registered = False

    def _fail(self, info: PluginInfo, exc: BaseException, what: str) -> None:
        info.error = f"{type(exc).__name__}: {exc}"
        where = f" (distribution {info.distribution} {info.version})" if info.distribution else ""
        if strict():
            raise PluginLoadError(f"plugin {info.name!r}{where} {what}: {info.error}") from exc
        tb = traceback.extract_tb(exc.__traceback__)
        origin = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
        print(
            f"vlattn: warning: plugin {info.name!r}{where} {what}: {info.error}{origin}; "
            f"it is skipped (set {ENV_DISABLE}={info.name} to silence this, "
            f"{ENV_STRICT}=1 to raise)",
            file=sys.stderr,
        )

    # -- registration ------------------------------------------------------------------------
    def _call_each(self, hook_name: str, make_kwargs: Callable[[PluginInfo], dict[str, Any]]) -> None:
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():  # in registration (load) order
            info = self.infos.get(impl.plugin_name) or PluginInfo(impl.plugin_name, "?")
            if info.error:
                continue
            try:
                impl.function(**make_kwargs(info))
            except Exception as exc:
                self._fail(info, exc, f"raised in {hook_name}")

    def ensure_registered(self) -> None:
        """Run the ``register_attention`` and ``register_tasks`` hooks once per plugin set."""
        if self._registered:
            return
        self._registered = True
        self.attention = Registry("attention mechanism")
        self.tasks = Registry("task")
        for info in self.infos.values():
            info.attention, info.tasks = [], []

        def attention_kwargs(info: PluginInfo) -> dict[str, Any]:
            def register(spec: AttentionSpec) -> None:
                self.attention.add(spec, info.name)
                info.attention.append(spec.name)

            return {"register": register}

        def task_kwargs(info: PluginInfo) -> dict[str, Any]:
            def register(spec: TaskSpec) -> None:
                self.tasks.add(spec, info.name)
                info.tasks.append(spec.name)

            return {"register": register}

        self._call_each("register_attention", attention_kwargs)
        self._call_each("register_tasks", task_kwargs)

    def add_commands(self, cli: click.Group) -> None:
        """Let every plugin add its click commands to ``cli``."""

        caller = self.pm.hook.register_commands
        for impl in caller.get_hookimpls():
            info = self.infos.get(impl.plugin_name) or PluginInfo(impl.plugin_name, "?")
            if info.error:
                continue
            before = set(cli.commands)
            try:
                impl.function(cli=cli)
            except Exception as exc:
                self._fail(info, exc, "raised in register_commands")
                continue
            info.commands = sorted(set(cli.commands) - before)

    def broadcast(self, hook_name: str, **kwargs: Any) -> None:
        """Call an event hook (``on_metrics`` ...) on every plugin; errors are warned about."""
        self._call_each(hook_name, lambda info: kwargs)

    def plugin_list(self) -> list[PluginInfo]:
        """Every plugin seen, loaded or not, with what it registered."""
        self.ensure_registered()
        return [self.infos[n] for n in sorted(self.infos)]


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide :class:`PluginHost`, loading entry points on first use."""
    global _HOST
    if _HOST is None:
        host = PluginHost()
        host.load_entry_points()
        _HOST = host
    return _HOST


def set_host(host: PluginHost | None) -> None:
    """Replace the process-wide host (``None`` reloads entry points on next use)."""
    global _HOST
    _HOST = host


def attention_registry() -> Registry[AttentionSpec]:
    """Every registered attention mechanism."""
    host = get_host()
    host.ensure_registered()
    return host.attention


def task_registry() -> Registry[TaskSpec]:
    """Every registered task."""
    host = get_host()
    host.ensure_registered()
    return host.tasks
