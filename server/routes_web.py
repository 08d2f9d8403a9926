"""The pages for people: the chat at ``/``, the dashboard at ``/dashboard``, their files under ``/web/``.

Plain files from ``server/web/`` (HTML, CSS, ES modules, the vendored Socket.IO client), read once when the
app is built and served from memory through the quart app: never on the websocket hot path (the front door
hands only ``/socket.io/`` upgrades to it). No build step: what is in the directory is what the browser gets.

Caching: there are no content hashes in the file names, so every response says ``no-cache`` with a strong
``ETag`` (the content's hash): a browser revalidates and gets ``304 Not Modified`` with no body until the file
changes, and never runs a stale module after an upgrade. With HTTP compression on, each file is also gzipped
once, when it is loaded (the vendored Socket.IO client is the largest), and that form has an ETag of its own
(``"<hash>-gzip"``): the two representations never share a validator, and a 304 answers only for the one
the request would get. The pages carry a Content-Security-Policy that
allows only this origin (scripts, styles, fetch and the websocket), so the chat runs no code from elsewhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from quart import Blueprint, Response, request

from protocol.content_coding import IDENTITY, STATIC_LEVEL, add_vary, choose_coding, is_compressible
from protocol.rest import RequestError
from server.http_compression import HttpCompression, accept_encoding, precompress

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
    """``coded``: the file's compressed forms by coding (empty without compression), each with its ETag."""

    __slots__ = ("body", "coded", "content_type", "etag")

    def __init__(self, body: bytes, content_type: str, coded: dict[str, bytes] | None = None) -> None:
        self.body = body
        self.content_type = content_type
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        self.coded = {coding: (data, f'{self.etag[:-1]}-{coding}"') for coding, data in (coded or {}).items()}

    def representation(self, coding: str) -> tuple[bytes, str]:
        """The bytes and the ETag sent for ``coding`` (``identity`` or one of ``coded``)."""
        return (self.body, self.etag) if coding == IDENTITY else self.coded[coding]


def load_files(root: Path = WEB_DIR, *, compress_threshold: int | None = None) -> dict[str, StaticFile]:
    """Every servable file under ``root`` by its path relative to it (``chat.js``, ``vendor/LICENSE``); with
    ``compress_threshold`` (bytes), the compressible ones of at least that size compressed too."""
    files: dict[str, StaticFile] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        content_type = CONTENT_TYPES.get(path.suffix, _NO_SUFFIX if not path.suffix else "")
        if content_type:
            body = path.read_bytes()
            coded = None
            if compress_threshold is not None and is_compressible(content_type):
                coded = dict(precompress(body, STATIC_LEVEL, compress_threshold))
            files[path.relative_to(root).as_posix()] = StaticFile(body, content_type, coded)
    return files


def _headers(file: StaticFile, etag: str) -> dict[str, str]:
    """What a 200 and a 304 of one representation both carry."""
    headers = {
        "Cache-Control": "no-cache",
        "ETag": etag,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if file.coded:  # the bytes depend on Accept-Encoding: caches must key on it
        headers["Vary"] = add_vary(None)
    if file.content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CSP
    return headers


def web_routes(
    root: Path = WEB_DIR, *, dashboard: bool = True, compression: HttpCompression | None = None
) -> Blueprint:
    """The chat's files, and the dashboard's unless ``dashboard`` is false (``--metrics-port``: the numbers
    are not for the public port); gzipped where the request takes it, with ``compression``."""
    bp = Blueprint("web", __name__)
    files = load_files(root, compress_threshold=compression.threshold if compression else None)
    if not dashboard:
        files = {name: file for name, file in files.items() if not name.startswith("dashboard.")}

    def serve(name: str) -> Response:
        file = files.get(name)
        if file is None:
            raise RequestError(404, f"Cannot {request.method} {request.path}")
        # Nothing acceptable (identity;q=0 and no gzip): identity anyway, see protocol.content_coding.
        coding = (choose_coding(accept_encoding(), file.coded) if file.coded else None) or IDENTITY
        body, etag = file.representation(coding)
        headers = _headers(file, etag)
        if etag in request.headers.get("If-None-Match", ""):
            return Response(b"", status=304, headers=headers)
        if coding != IDENTITY:
            headers["Content-Encoding"] = coding
        return Response(body, content_type=file.content_type, headers=headers)

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
