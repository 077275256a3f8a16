"""The browser demo page (server/static/index.html), served at `GET /` on the WebSocket port.

`TTSServer._process_request` calls `page_response(path)` before its 404: the page, a tiny
favicon (a browser asks for one, and a 404 would be a console error), or None for any
other path.
"""

from __future__ import annotations

import functools
from http import HTTPStatus
from importlib import resources

from websockets.datastructures import Headers
from websockets.http11 import Response

PAGE_PATHS = ("/", "/index.html")
FAVICON_PATH = "/favicon.ico"

# A sound-wave glyph; SVG keeps it a few hundred bytes with no binary asset.
FAVICON_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    b'<rect width="16" height="16" rx="3" fill="#2f6fed"/>'
    b'<path d="M3 8h1M5.5 5v6M8 3v10M10.5 5v6M13 8h0" stroke="#fff" stroke-width="1.6" '
    b'stroke-linecap="round"/></svg>'
)


@functools.cache
def page_html() -> bytes:
    """The page's bytes, read once from the installed package."""
    return resources.files("qwen3tts_jax.server").joinpath("static", "index.html").read_bytes()


def _response(body: bytes, content_type: str, cache: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", cache), ("Connection", "close")])
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)


def page_response(path: str) -> Response | None:
    """The response for the demo page's paths (`/`, `/index.html`, `/favicon.ico`), else None.

    `path` is the request path without its query string.
    """
    if path in PAGE_PATHS:
        return _response(page_html(), "text/html; charset=utf-8", "no-cache")
    if path == FAVICON_PATH:
        return _response(FAVICON_SVG, "image/svg+xml", "max-age=86400")
    return None
