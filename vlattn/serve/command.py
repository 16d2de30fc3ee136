"""``vlattn serve``: the attention explorer on a local address.

The command lives in the core, next to ``train`` and ``eval``, because it serves every plugin's
views and belongs to none of them (it still works when ``VLATTN_PLUGINS`` keeps only some). This
module imports click only; the web framework and torch are imported when the command runs.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import click

from vlattn.errors import VlattnError

INSTALL_HINT = (
    "vlattn serve needs the 'serve' extra: pip install 'vlattn[serve]' (starlette, uvicorn, python-multipart)"
)


def parse_models(values: tuple[str, ...]) -> dict[str, str]:
    """``NAME=PATH`` options as a dict; PATH must exist (a model file or a training run folder)."""
    models: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise click.BadParameter(f"expected NAME=PATH, got {value!r}", param_hint="'--model'")
        if not Path(path).exists():
            raise click.BadParameter(f"{path}: no such file or folder", param_hint="'--model'")
        models[name.strip()] = path
    return models


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port); one-line error when it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # connections queue from now on, even before the server's loop accepts them
    except OSError as exc:
        raise VlattnError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@click.command("serve", short_help="Explore attention in the browser: a local page and JSON API per model.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="address to listen on (others can connect when it is not a loopback address)",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="port (0: any free one)")
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME=PATH",
    help="use this model file (or run folder) for a view's model, e.g. text=runs/x/best.safetensors; "
    "repeatable [default: the bundled models]",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(0.01, 1024),
    default=8.0,
    show_default=True,
    help="largest request body, uploaded images included",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 3600),
    default=30.0,
    show_default=True,
    help="time limit of one request in seconds",
)
def serve_command(host: str, port: int, models: tuple[str, ...], max_upload_mb: float, timeout: float) -> None:
    """Serve the attention explorer: a page for each view (text, caption, DRAW, mechanisms and any
    plugin's) and the JSON API behind them, on http://127.0.0.1:8000/ by default.

    \b
    Examples:
      vlattn serve
      vlattn serve --port 8080 --model text=runs/sentiment/best.safetensors
      curl -s localhost:8000/api/classify -H 'Content-Type: application/json' -d '{"texts": ["great phone"]}'

    Everything the pages need is served from this process; nothing is fetched from the internet.
    Models load on their view's first request and stay loaded.
    """
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise VlattnError(INSTALL_HINT) from None
    from vlattn.serve.app import create_app
    from vlattn.serve.handler import Limits

    limits = Limits(max_body_bytes=int(max_upload_mb * (1 << 20)), timeout_s=timeout)
    app = create_app(models=parse_models(models), limits=limits)
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    if not is_loopback(host):
        click.echo(f"vlattn serve: warning: listening on {host}, reachable from other machines", err=True)
    views = ", ".join(app.state.runtimes) or "none"
    click.echo(f"vlattn serve: http://{shown}:{bound_port}/  (views: {views}; Ctrl-C stops)", err=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
