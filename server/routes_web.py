"""The pages for people: the chat at ``/``, the dashboard at ``/dashboard``, their files under ``/web/``.

Plain files from ``server/web/`` (HTML, CSS, ES modules, the vendored Socket.IO client), read once when the
app is built and served from memory through the quart app: never on the websocket hot path (the front door
hands only ``/socket.io/`` upgrades to it). No build step: what is in the directory is what the browser gets.

Caching: there are no content hashes in the file names, so every response says ``no-cache`` with a strong
``ETag`` (the content's hash): a browser revalidates and gets ``304 Not Modified`` with no body until the file
changes, and never runs a stale module after an upgrade. The pages carry a Content-Security-Policy that
allows only this origin (scripts, styles, fetch and the websocket), so the chat runs no code from elsewhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from quart import Blueprint, Response, request

from protocol.rest import RequestError

WEB_DIR = Path(__file__).resolve().parent / "web"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}
# VERSION and LICENSE of the vendored client: plain text.
_NO_SUFFIX = "text/plain; charset=utf-8"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
)


class StaticFile:
    __slots__ = ("body", "content_type", "etag")

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def load_files(root: Path = WEB_DIR) -> dict[str, StaticFile]:
    """Every servable file under ``root`` by its path relative to it (``chat.js``, ``vendor/LICENSE``)."""
    files: dict[str, StaticFile] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        content_type = CONTENT_TYPES.get(path.suffix, _NO_SUFFIX if not path.suffix else "")
        if content_type:
            files[path.relative_to(root).as_posix()] = StaticFile(path.read_bytes(), content_type)
    return files


def web_routes(root: Path = WEB_DIR, *, dashboard: bool = True) -> Blueprint:
    """The chat's files, and the dashboard's unless ``dashboard`` is false (``--metrics-port``: the numbers
    are not for the public port)."""
    bp = Blueprint("web", __name__)
    files = load_files(root)
    if not dashboard:
        files = {name: file for name, file in files.items() if not name.startswith("dashboard.")}

    def serve(name: str) -> Response:
        file = files.get(name)
        if file is None:
            raise RequestError(404, f"Cannot {request.method} {request.path}")
        headers = {
            "Cache-Control": "no-cache",
            "ETag": file.etag,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        if file.content_type.startswith("text/html"):
            headers["Content-Security-Policy"] = CSP
        if file.etag in request.headers.get("If-None-Match", ""):
            return Response(b"", status=304, headers=headers)
        return Response(file.body, content_type=file.content_type, headers=headers)

    @bp.get("/")
    async def chat_page() -> Response:
        return serve("index.html")

    if dashboard:

        @bp.get("/dashboard")
        async def dashboard_page() -> Response:
            return serve("dashboard.html")

    @bp.get("/web/<path:name>")
    async def asset(name: str) -> Response:
        return serve(name)

    return bp
