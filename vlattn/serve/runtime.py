"""The views a server offers: found through the ``register_views`` hook, built once, loaded once.

Imports no web framework; :mod:`vlattn.serve.app` puts these behind HTTP.
"""

from __future__ import annotations

import importlib.resources
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from vlattn.errors import VlattnError
from vlattn.registry import resolve
from vlattn.serve.batching import Batcher
from vlattn.serve.handler import ApiError, ApiInput, Limits, ViewHandler
from vlattn.serve.spec import ApiRoute, ViewSpec, ViewSpecError

if TYPE_CHECKING:
    from vlattn.plugins import PluginHost


def discover_views(host: PluginHost | None = None) -> list[ViewSpec]:
    """Every view the loaded plugins register, in navigation order.

    A spec that is not a :class:`ViewSpec`, or a name or route already taken, is skipped with a
    warning on stderr (the other views are served).
    """
    from vlattn.plugins import get_host

    host = host or get_host()
    found: list[Any] = []
    host.call_hook("register_views", register=found.append)
    views: list[ViewSpec] = []
    routes: set[str] = set()
    for spec in found:
        problem = None
        if not isinstance(spec, ViewSpec):
            problem = f"register() takes a vlattn.serve.ViewSpec, got {spec!r:.60}"
        elif any(v.name == spec.name for v in views):
            problem = f"view {spec.name!r} is registered twice; the first one is kept"
        elif any(r.path in routes for r in spec.routes):
            problem = f"view {spec.name!r} uses a route another view has; it is skipped"
        if problem:
            print(f"vlattn: warning: serve: {problem}", file=sys.stderr)
            continue
        views.append(spec)
        routes.update(r.path for r in spec.routes)
    return sorted(views, key=lambda v: (v.order, v.name))


def load_script(spec: ViewSpec) -> str:
    """The JavaScript module of a view: a package file (``"pkg:file.js"``) or a string attribute."""
    target, _, attr = spec.script.partition(":")
    if attr.endswith(".js"):
        try:
            return importlib.resources.files(target).joinpath(attr).read_text(encoding="utf-8")
        except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError) as exc:
            raise ViewSpecError(f"view {spec.name!r}: script {spec.script!r} cannot be read: {exc}") from None
    text = resolve(spec.script)
    if not isinstance(text, str):
        raise ViewSpecError(f"view {spec.name!r}: script {spec.script!r} is not a string")
    return text


class ViewRuntime:
    """One view in a running server: its handler, one worker thread, a batcher per route."""

    def __init__(self, spec: ViewSpec, models: Mapping[str, str], limits: Limits) -> None:
        self.spec = spec
        self.limits = limits
        handler_class = resolve(spec.handler)
        if not (isinstance(handler_class, type) and issubclass(handler_class, ViewHandler)):
            raise ViewSpecError(f"view {spec.name!r}: handler {spec.handler!r} is not a vlattn.serve.ViewHandler")
        self.handler: ViewHandler = handler_class({k: v for k, v in models.items() if k in spec.models})
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"vlattn-view-{spec.name}")
        self._loaded = False
        self._load_error: str | None = None
        self._lock = threading.Lock()
        self.batchers: dict[str, Batcher] = {}
        self.routes: dict[str, ApiRoute] = {}
        for route in spec.routes:
            for method in filter(None, (route.run, route.parse)):
                if not callable(getattr(self.handler, method, None)):
                    raise ViewSpecError(f"view {spec.name!r}: handler has no method {method!r} ({route.path})")
            self.routes[route.path] = route
            self.batchers[route.path] = Batcher(
                self._runner(route), self.executor, max_batch=route.max_batch, max_queue=limits.max_queue
            )

    def ensure_loaded(self) -> None:
        """Load the handler's models once; a failure answers every later request 503 with its reason."""
        with self._lock:
            if not self._loaded and self._load_error is None:
                try:
                    self.handler.load()
                    self._loaded = True
                except Exception as exc:
                    message = (
                        str(exc).split("\n")[0] if isinstance(exc, VlattnError) else f"{type(exc).__name__}: {exc}"
                    )
                    self._load_error = f"the {self.spec.name} view's model is unavailable: {message}"
            if self._load_error is not None:
                raise ApiError(self._load_error, 503)

    def _runner(self, route: ApiRoute) -> Any:
        method = getattr(self.handler, route.run)

        def run(items: list[Any]) -> list[Any]:
            self.ensure_loaded()
            return list(method(items))

        return run

    def parse(self, route: ApiRoute, request: ApiInput) -> Any:
        """What the route's ``run`` takes for this request (the route's ``parse`` method, if any)."""
        return getattr(self.handler, route.parse)(request) if route.parse else request

    def describe(self) -> dict[str, Any]:
        """The view as ``GET /api/views`` lists it."""
        spec = self.spec
        return {
            "name": spec.name,
            "title": spec.title,
            "summary": spec.summary,
            "page": f"/view/{spec.name}",
            "models": {slot: self.handler.model_path(slot) or "bundled" for slot in spec.models},
            "routes": [{"path": r.path, "method": r.method, "summary": r.summary} for r in spec.routes],
        }

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def build_runtimes(views: Sequence[ViewSpec], models: Mapping[str, str], limits: Limits) -> dict[str, ViewRuntime]:
    """A runtime per view; ``models`` names must be slots some view declares."""
    slots = {slot for view in views for slot in view.models}
    unknown = sorted(set(models) - slots)
    if unknown:
        raise VlattnError(
            f"--model {unknown[0]}=...: no view has a model named {unknown[0]!r} (models: {', '.join(sorted(slots))})"
        )
    return {view.name: ViewRuntime(view, models, limits) for view in views}
