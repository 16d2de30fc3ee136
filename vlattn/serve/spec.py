"""What a plugin hands to ``register_views``: a :class:`ViewSpec` with its :class:`ApiRoute` s.

Everything is named by dotted strings, so registering a view imports neither torch nor the web
framework; the server resolves the handler and the script only when it starts or serves them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vlattn.errors import VlattnError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
ROUTE_PATTERN = re.compile(r"^/api/[a-z][a-z0-9/_-]{0,79}$")
RESERVED_ROUTES = frozenset({"/api/views", "/api/health"})


class ViewSpecError(VlattnError):
    """A view spec that cannot be served (bad name, route or script reference)."""


@dataclass(frozen=True)
class ApiRoute:
    """One JSON endpoint of a view.

    Attributes:
        path: ``/api/NAME`` (lower case letters, digits, ``-``, ``_`` and ``/``).
        run: name of the handler method called with a list of parsed inputs; it returns one
            JSON-ready ``dict`` per input, in order. Requests that arrive together are batched.
        parse: name of the handler method that turns one :class:`vlattn.serve.ApiInput` into what
            ``run`` takes, raising :class:`vlattn.serve.ApiError` for a bad request; ``None`` hands
            ``run`` the ``ApiInput`` itself.
        method: ``"POST"`` (JSON or multipart body) or ``"GET"`` (query string).
        max_batch: most inputs handed to ``run`` at once (1: no batching).
        summary: one line for ``GET /api/views``.
    """

    path: str
    run: str
    parse: str | None = None
    method: str = "POST"
    max_batch: int = 1
    summary: str = ""

    def __post_init__(self) -> None:
        if not ROUTE_PATTERN.match(self.path) or self.path in RESERVED_ROUTES:
            raise ViewSpecError(f"route {self.path!r} must look like '/api/name' and not be one of the server's own")
        if self.method not in ("GET", "POST"):
            raise ViewSpecError(f"route {self.path}: method must be GET or POST, got {self.method!r}")
        if self.max_batch < 1:
            raise ViewSpecError(f"route {self.path}: max_batch must be at least 1")


@dataclass(frozen=True)
class ViewSpec:
    """A page of ``vlattn serve`` and the API behind it.

    Attributes:
        name: the page's address, ``/view/NAME`` (lower case, digits and ``-``).
        title: shown in the navigation bar and the page title.
        handler: ``"package.module:Class"``, a :class:`vlattn.serve.ViewHandler` subclass; built
            once when the server starts, its models loaded on first use.
        script: the page's JavaScript module: ``"package:path/file.js"`` (a file shipped in the
            package) or ``"package.module:ATTR"`` (a string attribute). It exports
            ``mount(root, api)``; see ``vlattn/serve/static/vlattn.js`` for ``api``.
        routes: the view's endpoints.
        summary: one line on the index page.
        models: names of the model slots ``--model NAME=PATH`` may fill (``"text"``).
        order: position in the navigation bar (lower first).
        plugin: filled in by the server: the plugin that registered the view, when known.
    """

    name: str
    title: str
    handler: str
    script: str
    routes: tuple[ApiRoute, ...] = ()
    summary: str = ""
    models: tuple[str, ...] = ()
    order: int = 100
    plugin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ViewSpecError(f"view name {self.name!r} must be lower case letters, digits and '-'")
        if ":" not in self.handler or ":" not in self.script:
            raise ViewSpecError(f"view {self.name!r}: handler and script must look like 'package.module:Name'")
        for slot in self.models:
            if not NAME_PATTERN.match(slot):
                raise ViewSpecError(f"view {self.name!r}: model slot {slot!r} must be lower case letters, digits, '-'")
