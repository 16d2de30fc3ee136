"""The HTML shell of every page: navigation, the view's mount point and its script.

Pages hold no inline script (the Content-Security-Policy forbids it): ``/static/vlattn.js`` reads
the ``data-`` attributes of ``<main>`` and imports the view's module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any


def _shell(title: str, views: Sequence[dict[str, Any]], body: str, current: str = "") -> str:
    links = "".join(
        f'<a href="{escape(v["page"])}"{" aria-current=page" if v["name"] == current else ""}>{escape(v["title"])}</a>'
        for v in views
    )
    return (
        "<!doctype html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        '<meta name=viewport content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)} · vlattn</title>\n"
        '<link rel=stylesheet href="/static/vlattn.css">\n'
        '<script type=module src="/static/vlattn.js"></script>\n'
        "</head>\n<body>\n"
        f'<header><a class=brand href="/">vlattn</a><nav>{links}</nav></header>\n'
        f"{body}\n</body>\n</html>\n"
    )


def index_page(views: Sequence[dict[str, Any]]) -> str:
    """The start page: one card per view."""
    cards = "".join(
        f'<a class=card href="{escape(v["page"])}"><h2>{escape(v["title"])}</h2><p>{escape(v["summary"])}</p></a>'
        for v in views
    )
    body = (
        "<main class=index><h1>Attention explorer</h1>"
        "<p>Every model runs on this machine; nothing is sent anywhere else.</p>"
        f"<div class=cards>{cards or '<p>No plugin registered a view.</p>'}</div></main>"
    )
    return _shell("Attention explorer", views, body)


def view_page(view: dict[str, Any], views: Sequence[dict[str, Any]]) -> str:
    """A view's page: ``<main>`` carries the view's name, script and routes for its module."""
    data = escape(json.dumps(view), quote=True)
    body = (
        f'<main id=view data-view="{escape(view["name"])}" data-script="/views/{escape(view["name"])}.js" '
        f'data-spec="{data}"><h1>{escape(view["title"])}</h1><p class=summary>{escape(view["summary"])}</p>'
        "<noscript>This page needs JavaScript.</noscript></main>"
    )
    return _shell(view["title"], views, body, current=view["name"])


def not_found_page(views: Sequence[dict[str, Any]]) -> str:
    """404 for an unknown page."""
    return _shell("Not found", views, '<main><h1>Not found</h1><p><a href="/">All views</a></p></main>')
