"""Loading plugins from the ``vlattn`` entry-point group, each in isolation.

Rules:

* ``VLATTN_PLUGINS=a,b`` loads only the named plugins (entry-point or distribution names);
  ``VLATTN_DISABLE_PLUGINS=a,b`` skips some. Both apply *before* a plugin is imported.
* Hooks are called by pluggy with pluggy's semantics: an implementation declares the subset of
  the spec's arguments it needs, ``tryfirst`` / ``trylast`` order the calls, and hook wrappers
  (``wrapper=True`` or the older ``hookwrapper=True``) wrap the others.
* A plugin that raises on import or in a hook is reported (a warning on stderr naming its
  distribution and version, and its error in ``vlattn plugins``) and skipped from then on;
  whatever it registered before failing is withdrawn. The other plugins are not affected.
* Mistakes in a plugin's hooks (an unknown hook name such as ``register_task``, an argument the
  hook does not provide, a hook function without ``@hookimpl``) are warnings naming the plugin;
  the plugin's correct hooks still work.
* ``VLATTN_STRICT_PLUGINS=1`` turns every one of these warnings into an error.
* A name registered by two plugins is an error naming both.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import sys
import traceback
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from types import CodeType, ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from vlattn import hookspecs
from vlattn.errors import DuplicateNameError, PluginLoadError, VlattnError
from vlattn.hookcheck import HookImplementation, inspect_plugin
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
    """What ``vlattn plugins`` reports about one plugin.

    Attributes:
        name: the entry-point name (``example``).
        module: the module the entry point names.
        distribution, version: the installed distribution that provides it, when known.
        hooks: the hooks it implements correctly.
        attention, tasks, commands: what it registered.
        problems: mistakes in its hook implementations (each one line); they do not stop it.
        error: why it was skipped, when it was.
    """

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str:
        """``plugin 'name' (distribution D V)``: how messages name this plugin."""
        where = f" (distribution {self.distribution} {self.version})" if self.distribution else ""
        return f"plugin {self.name!r}{where}"

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
        self._acting: contextvars.ContextVar[PluginInfo | None] = contextvars.ContextVar("acting", default=None)
        self._hook_codes: dict[CodeType, PluginInfo] = {}
        self._cli: click.Group | None = None
        self._pending: dict[str, list[tuple[str, Any]]] = {}

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

    def add_plugin(
        self, module: ModuleType | object, name: str, *, distribution: str | None = None, version: str | None = None
    ) -> PluginInfo:
        """Register an already-imported plugin object (used by tests and embedding code)."""
        module_name = getattr(module, "__name__", type(module).__name__)
        info = PluginInfo(name, module_name, distribution, version)
        self.infos[name] = info
        self._register_module(module, info)
        return info

    def _register_module(self, module: object, info: PluginInfo) -> None:
        implementations, problems = inspect_plugin(self.pm, module)
        for problem in problems:
            info.problems.append(problem.message)
            self._warn(info, problem.message, fix="fix the plugin's hook")
        proxy = ModuleType(getattr(module, "__name__", info.name))
        for impl in implementations:
            setattr(proxy, impl.attribute, self._isolated(impl, info))
            self._hook_codes[impl.function.__code__] = info
        try:
            self.pm.register(proxy, name=info.name)
        except Exception as exc:
            self._fail(info, exc, "could not be registered")
            return
        info.hooks = sorted({impl.hook_name for impl in implementations})
        self._registered = False

    # -- isolation ---------------------------------------------------------------------------
    def _isolated(self, impl: HookImplementation, info: PluginInfo) -> Callable[..., Any]:
        """``impl.function`` wrapped so that its failure disables only its own plugin.

        pluggy reads the argument names through ``functools.wraps`` (``__wrapped__``), so it passes
        exactly the arguments the implementation declares.
        """
        function = impl.function
        if impl.is_wrapper:
            return self._isolated_wrapper(impl, info)

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            if info.error:
                return None
            token = self._acting.set(info)
            commands_before = set(self._cli.commands) if self._cli is not None else set()
            ok = False
            try:
                result = function(*args, **kwargs)
                ok = True
                return result
            except PluginLoadError:
                raise
            except Exception as exc:
                self._fail(info, exc, f"raised in {impl.hook_name}")
                return None
            finally:
                self._acting.reset(token)
                if self._cli is not None:
                    self._account_commands(info, commands_before, ok)

        return call

    def _isolated_wrapper(self, impl: HookImplementation, info: PluginInfo) -> Callable[..., Any]:
        """A hook wrapper that runs with ``info`` as the acting plugin; its own errors reach
        :meth:`call_hook`, which finds the plugin from the traceback."""
        function = impl.function

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            generator = function(*args, **kwargs)
            with self._acting_as(info):
                value = next(generator)
            try:
                sent = yield value
            except BaseException as exc:
                with self._acting_as(info):
                    try:
                        generator.throw(exc)
                    except StopIteration as stop:
                        return stop.value
            else:
                with self._acting_as(info):
                    try:
                        generator.send(sent)
                    except StopIteration as stop:
                        return stop.value
            raise RuntimeError(f"hook wrapper {impl.attribute!r} yielded more than once")

        return wrapper

    @contextlib.contextmanager
    def _acting_as(self, info: PluginInfo) -> Iterator[None]:
        token = self._acting.set(info)
        try:
            yield
        finally:
            self._acting.reset(token)

    def _account_commands(self, info: PluginInfo, before: set[str], ok: bool) -> None:
        assert self._cli is not None
        added = set(self._cli.commands) - before
        if ok and not info.error:
            info.commands = sorted({*info.commands, *added})
            return
        for name in added:  # a plugin that failed keeps nothing it added
            self._cli.commands.pop(name, None)

    def _culprit(self, exc: BaseException) -> PluginInfo | None:
        """The plugin whose hook function is the innermost one in ``exc``'s traceback."""
        found = None
        for frame in traceback.walk_tb(exc.__traceback__):
            found = self._hook_codes.get(frame[0].f_code, found)
        return found

    def call_hook(self, hook_name: str, **kwargs: Any) -> bool:
        """Call ``hook_name`` through pluggy; ``False`` when a plugin's hook wrapper failed (the
        plugin is then disabled; other plugins' failures are handled by their own isolation)."""
        caller = getattr(self.pm.hook, hook_name)
        try:
            caller(**kwargs)
        except PluginLoadError:
            raise
        except Exception as exc:
            info = self._culprit(exc)
            if info is None:
                raise
            self._fail(info, exc, f"raised in {hook_name}")
            return False
        return True

    # -- reporting ---------------------------------------------------------------------------
    def _fail(self, info: PluginInfo, exc: BaseException, what: str) -> None:
        info.error = f"{type(exc).__name__}: {exc}"
        self.attention.discard_plugin(info.name)
        self.tasks.discard_plugin(info.name)
        info.attention, info.tasks = [], []
        if strict():
            raise PluginLoadError(f"{info.label} {what}: {info.error}") from exc
        tb = traceback.extract_tb(exc.__traceback__)
        origin = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
        print(
            f"vlattn: warning: {info.label} {what}: {info.error}{origin}; it is skipped "
            f"(set {ENV_DISABLE}={info.name} to silence this, {ENV_STRICT}=1 to raise)",
            file=sys.stderr,
        )

    def _warn(self, info: PluginInfo, message: str, *, fix: str) -> None:
        if strict():
            raise PluginLoadError(f"{info.label}: {message}")
        print(f"vlattn: warning: {info.label}: {message} ({fix}; {ENV_STRICT}=1 makes this an error)", file=sys.stderr)

    # -- registration ------------------------------------------------------------------------
    def _collect_spec(self, kind: str, spec: Any) -> None:
        info = self._acting.get()
        if info is None:
            raise VlattnError(f"register() for {kind} was called outside a plugin's registration hook")
        if not info.error:
            self._pending.setdefault(info.name, []).append((kind, spec))

    def ensure_registered(self) -> None:
        """Run the ``register_attention`` and ``register_tasks`` hooks once per plugin set.

        pluggy calls the implementations last-registered first; the names they register are then
        added in load order (vlattn's own plugins first), so which plugin keeps a contested name
        does not depend on call order: the later one fails, with an error naming both.
        """
        if self._registered:
            return
        self._registered = True
        for _attempt in range(len(self.infos) + 1):  # a failed hook wrapper restarts registration
            self._pending = {}
            ok = self.call_hook(
                "register_attention", register=lambda spec: self._collect_spec("attention", spec)
            ) and self.call_hook("register_tasks", register=lambda spec: self._collect_spec("tasks", spec))
            if ok:
                break
        self.attention = Registry("attention mechanism")
        self.tasks = Registry("task")
        order = sorted(self.infos.values(), key=lambda i: i.distribution != "vlattn")  # stable: load order
        for info in order:
            info.attention, info.tasks = [], []
            if info.error:
                continue
            for kind, spec in self._pending.get(info.name, []):
                registry = self.attention if kind == "attention" else self.tasks
                expected = AttentionSpec if kind == "attention" else TaskSpec
                try:
                    if not isinstance(spec, expected):
                        raise TypeError(f"register() takes a vlattn.registry.{expected.__name__}, got {spec!r:.60}")
                    registry.add(spec, info.name)
                except (DuplicateNameError, ValueError, TypeError) as exc:
                    self._fail(info, exc, "registered a name it cannot have")
                    break
                getattr(info, kind).append(spec.name)
        self._pending = {}

    def add_commands(self, cli: click.Group) -> None:
        """Let every plugin add its click commands to ``cli``."""
        self._cli = cli
        try:
            self.call_hook("register_commands", cli=cli)
        finally:
            self._cli = None

    def broadcast(self, hook_name: str, **kwargs: Any) -> None:
        """Call an event hook (``on_metrics`` ...) on every plugin; errors are warned about."""
        self.call_hook(hook_name, **kwargs)

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
