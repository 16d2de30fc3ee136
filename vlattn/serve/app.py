"""The ``vlattn serve`` web application (Starlette): pages, static files and the JSON API.

Every ``/api/`` answer is JSON; an error is one line, ``{"error": "..."}``, with its status code.
Nothing a request names is ever opened as a file: static files and view scripts are looked up in
tables built when the application is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import sys
import traceback
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlattn.errors import VlattnError
from vlattn.serve.handler import ApiError, ApiInput, Limits, Upload
from vlattn.serve.pages import index_page, not_found_page, view_page
from vlattn.serve.runtime import ViewRuntime, build_runtimes, discover_views, load_script
from vlattn.serve.spec import ViewSpec

STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
IMAGE_TYPES = ("image/",)


class BodyTooLarge(Exception):
    """A request body past :attr:`Limits.max_body_bytes`."""


class LimitBody:
    """ASGI middleware: refuse bodies over ``limit`` bytes (413), by Content-Length or as they stream."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await too_large(self.limit)(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge
            return message

        await self.app(scope, limited, send)


def too_large(limit: int) -> JSONResponse:
    return error_response(f"request body is larger than the limit of {limit} bytes", 413)


def error_response(message: str, status: int) -> JSONResponse:
    """``{"error": message}`` with ``status`` (the message on one line)."""
    return JSONResponse({"error": " ".join(str(message).split()) or "error"}, status, headers=SECURITY_HEADERS)


async def read_input(request: Request, limits: Limits) -> ApiInput:
    """The request's fields and files: JSON object, multipart form, a raw image body or a query string."""
    if request.method == "GET":
        return ApiInput(dict(request.query_params), {}, limits)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=4, max_fields=64, max_part_size=limits.max_body_bytes)
        except HTTPException as exc:
            raise ApiError(f"malformed form: {exc.detail}", 400) from None
        fields: dict[str, Any] = {}
        files: dict[str, Upload] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files[key] = Upload(await value.read(), value.filename or "", value.content_type or "")
            else:
                fields[key] = value
        return ApiInput(fields, files, limits)
    body = await request.body()
    if kind.startswith(IMAGE_TYPES) or kind == "application/octet-stream":
        return ApiInput(dict(request.query_params), {"image": Upload(body, "", kind)}, limits)
    if not body.strip():
        return ApiInput(dict(request.query_params), {}, limits)
    if kind not in ("application/json", "") and not kind.endswith("+json"):
        raise ApiError(f"send JSON, a form or an image, not {kind}", 400)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(f"the body is not valid JSON ({exc})", 400) from None
    if not isinstance(data, dict):
        raise ApiError("the JSON body must be an object", 400)
    return ApiInput(data, {}, limits)


def endpoint(runtime: ViewRuntime, path: str, limits: Limits) -> Any:
    """The Starlette endpoint of one API route: read, parse, batch, answer within the time limit."""
    from starlette.concurrency import run_in_threadpool

    route = runtime.routes[path]
    batcher = runtime.batchers[path]

    async def call(request: Request) -> Response:
        async def answer() -> Any:
            data = await read_input(request, limits)
            item = await run_in_threadpool(runtime.parse, route, data) if route.parse else data
            return await batcher.submit(item)

        try:
            result = await asyncio.wait_for(answer(), limits.timeout_s)
        except TimeoutError:
            return error_response(f"the request took longer than the limit of {limits.timeout_s:g} s", 504)
        return JSONResponse(result, headers=SECURITY_HEADERS)

    return call


def static_table() -> dict[str, tuple[bytes, str]]:
    """File name -> (content, media type) of the core's static files."""
    table = {}
    for entry in importlib.resources.files("vlattn.serve").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            table[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return table


def create_app(
    views: Sequence[ViewSpec] | None = None,
    *,
    models: Mapping[str, str] | None = None,
    limits: Limits | None = None,
) -> Starlette:
    """The application serving ``views`` (default: every plugin's) with ``models`` (slot -> path)
    overriding bundled models, within ``limits``."""
    limits = limits or Limits()
    runtimes = build_runtimes(discover_views() if views is None else views, models or {}, limits)
    static = static_table()
    scripts: dict[str, str] = {}

    def described() -> list[dict[str, Any]]:
        return [r.describe() for r in runtimes.values()]

    async def index(request: Request) -> Response:
        return HTMLResponse(index_page(described()), headers=SECURITY_HEADERS)

    async def page(request: Request) -> Response:
        runtime = runtimes.get(request.path_params["name"])
        if runtime is None:
            return HTMLResponse(not_found_page(described()), 404, headers=SECURITY_HEADERS)
        return HTMLResponse(view_page(runtime.describe(), described()), headers=SECURITY_HEADERS)

    async def static_file(request: Request) -> Response:
        found = static.get(request.path_params["name"])
        if found is None:
            raise HTTPException(404)
        return Response(found[0], media_type=found[1], headers=SECURITY_HEADERS)

    async def view_script(request: Request) -> Response:
        runtime = runtimes.get(request.path_params["name"])
        if runtime is None:
            raise HTTPException(404)
        if runtime.spec.name not in scripts:
            scripts[runtime.spec.name] = load_script(runtime.spec)
        return Response(scripts[runtime.spec.name], media_type=STATIC_TYPES[".js"], headers=SECURITY_HEADERS)

    async def list_views(request: Request) -> Response:
        return JSONResponse({"views": described()}, headers=SECURITY_HEADERS)

    async def health(request: Request) -> Response:
        batches = {p: b.batches for r in runtimes.values() for p, b in r.batchers.items()}
        return JSONResponse({"ok": True, "batches": batches}, headers=SECURITY_HEADERS)

    routes = [
        Route("/", index),
        Route("/view/{name}", page),
        Route("/static/{name}", static_file),
        Route("/views/{name}.js", view_script),
        Route("/api/views", list_views),
        Route("/api/health", health),
    ]
    for runtime in runtimes.values():
        for path, route in runtime.routes.items():
            routes.append(Route(path, endpoint(runtime, path, limits), methods=[route.method]))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if not request.url.path.startswith("/api/"):
            if exc.status_code == 404:
                return HTMLResponse(not_found_page(described()), 404, headers=SECURITY_HEADERS)
            return Response(str(exc.detail), exc.status_code, headers=SECURITY_HEADERS)
        messages = {404: f"no such endpoint: {request.url.path}", 405: f"{request.method} is not allowed here"}
        return error_response(messages.get(exc.status_code, str(exc.detail)), exc.status_code)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(str(exc), exc.status)

    async def on_user_error(request: Request, exc: Exception) -> Response:
        return error_response(str(exc).split("\n")[0], 422)

    async def on_too_large(request: Request, exc: Exception) -> Response:
        return too_large(limits.max_body_bytes)

    async def on_internal_error(request: Request, exc: Exception) -> Response:
        traceback.print_exception(exc, file=sys.stderr)
        return error_response(f"internal error: {type(exc).__name__}: {exc}", 500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for runtime in runtimes.values():
            for batcher in runtime.batchers.values():
                await batcher.close()
            runtime.close()

    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: on_http_error,
            ApiError: on_api_error,
            VlattnError: on_user_error,
            BodyTooLarge: on_too_large,
            Exception: on_internal_error,
        },
        lifespan=lifespan,
    )
    app.state.runtimes = runtimes
    app.add_middleware(LimitBody, limit=limits.max_body_bytes)
    return app
