"""``vlattn serve``: a local attention explorer, pages and a JSON API, with a view per plugin.

A plugin adds a page by implementing the ``register_views`` hook::

    from vlattn import hookimpl
    from vlattn.serve import ApiRoute, ViewSpec

    @hookimpl
    def register_views(register):
        register(ViewSpec(name="parity", title="Parity", handler="my_plugin.view:ParityView",
                          script="my_plugin:static/parity.js",
                          routes=(ApiRoute("/api/parity", run="parity", parse="parse", max_batch=32),)))

Importing this package is cheap (no torch, no web framework); :func:`vlattn.serve.app.create_app`
builds the application and needs the ``serve`` extra (``pip install 'vlattn[serve]'``).
"""

from __future__ import annotations

from vlattn.serve.handler import ApiError, ApiInput, Limits, Upload, ViewHandler
from vlattn.serve.spec import ApiRoute, ViewSpec, ViewSpecError

__all__ = ["ApiError", "ApiInput", "ApiRoute", "Limits", "Upload", "ViewHandler", "ViewSpec", "ViewSpecError"]
