"""Shared by the ``vlattn serve`` tests: an in-process app, a real server on 127.0.0.1, images."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="vlattn serve needs the serve extra")
pytest.importorskip("uvicorn", reason="vlattn serve needs the serve extra")
pytest.importorskip("httpx", reason="starlette's test client needs httpx")


def png_bytes(picture: Any) -> bytes:
    """``picture`` (a PIL image) as PNG bytes."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def scene_png(index: int = 2) -> bytes:
    """A synthetic test scene the bundled captioner knows, as PNG bytes."""
    from vlattn_caption.synthetic import make_scene

    return png_bytes(make_scene(0, "test", index).image)


@contextlib.contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yields its base URL."""
    import uvicorn

    from vlattn.serve.command import bind

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
