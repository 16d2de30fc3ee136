"""Checking a plugin's hook implementations against the hook specs before pluggy sees them.

pluggy refuses a whole plugin when one implementation declares an argument its spec lacks, and
accepts an implementation of a hook that does not exist (a misspelling) until
``PluginManager.check_pending`` is called. vlattn wants each mistake reported on its own, naming
the plugin and saying what to fix, while the plugin's correct hooks keep working. This module
finds those mistakes; :mod:`vlattn.plugins` decides what to do with them.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy


@dataclass(frozen=True)
class HookProblem:
    """One mistake in a plugin's hook implementations.

    Attributes:
        attribute: the name of the plugin's function (``register_task``).
        message: what is wrong and how to fix it, one line.
    """

    attribute: str
    message: str


@dataclass(frozen=True)
class HookImplementation:
    """A valid hook implementation of a plugin: its attribute name, function and pluggy options."""

    attribute: str
    hook_name: str
    function: Callable[..., Any]
    options: dict[str, Any]

    @property
    def is_wrapper(self) -> bool:
        """True for new-style (``wrapper=True``) and old-style (``hookwrapper=True``) wrappers."""
        return bool(self.options.get("wrapper") or self.options.get("hookwrapper"))


def spec_arguments(pm: pluggy.PluginManager) -> dict[str, tuple[str, ...]]:
    """Every hook name that ``pm`` has a spec for, mapped to the spec's argument names."""
    found: dict[str, tuple[str, ...]] = {}
    for name in dir(pm.hook):
        caller = getattr(pm.hook, name, None)
        spec = getattr(caller, "spec", None)
        if spec is not None:
            found[name] = tuple(spec.argnames)
    return found


def implementation_arguments(function: Callable[..., Any], options: dict[str, Any]) -> tuple[str, ...]:
    """The arguments pluggy will pass to ``function``: its own :class:`pluggy.HookImpl` reading
    (positional parameters without a default)."""
    return tuple(pluggy.HookImpl(None, "check", function, options).argnames)  # type: ignore[arg-type]


def inspect_plugin(pm: pluggy.PluginManager, plugin: object) -> tuple[list[HookImplementation], list[HookProblem]]:
    """Split ``plugin``'s hook implementations into valid ones and problems.

    A problem is: an implementation (a function marked ``@hookimpl``) of a hook that has no spec,
    unless marked ``optionalhook=True``; an implementation asking for an argument its spec does not
    provide; a wrapper that is not a generator function; and a function named exactly like a hook
    that lacks the ``@hookimpl`` marker (pluggy would ignore it silently).
    """
    specs = spec_arguments(pm)
    valid: list[HookImplementation] = []
    problems: list[HookProblem] = []
    for attribute in dir(plugin):
        try:
            options = pm.parse_hookimpl_opts(plugin, attribute)
        except Exception:  # an attribute that raises on access is not a hook
            continue
        function = getattr(plugin, attribute, None)
        if options is None:
            if attribute in specs and inspect.isfunction(function):
                problems.append(
                    HookProblem(
                        attribute, f"function {attribute!r} is not decorated with @vlattn.hookimpl: it is ignored"
                    )
                )
            continue
        options = dict(options)
        hook_name = options.get("specname") or attribute
        if hook_name not in specs:
            if options.get("optionalhook"):
                continue
            close = difflib.get_close_matches(hook_name, list(specs), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f" (hooks: {', '.join(sorted(specs))})"
            problems.append(HookProblem(attribute, f"implements unknown hook {hook_name!r}{hint}"))
            continue
        try:
            arguments = implementation_arguments(function, options)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            arguments = ()
        unknown = [a for a in arguments if a not in specs[hook_name]]
        if unknown:
            problems.append(
                HookProblem(
                    attribute,
                    f"hook {hook_name!r} has no argument {', '.join(map(repr, unknown))} "
                    f"(it provides: {', '.join(specs[hook_name]) or 'none'})",
                )
            )
            continue
        impl = HookImplementation(attribute, hook_name, function, options)  # type: ignore[arg-type]
        if impl.is_wrapper and not inspect.isgeneratorfunction(function):
            problems.append(HookProblem(attribute, f"wrapper of hook {hook_name!r} must be a generator (use yield)"))
            continue
        valid.append(impl)
    return valid, problems
