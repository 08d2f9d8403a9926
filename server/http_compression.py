"""gzip for the quart app's responses: REST JSON, Engine.IO polling payloads, ``/metrics``, error bodies.

One ``after_request`` hook sees every response the app makes (polling is a blueprint of the same app), asks
:mod:`protocol.content_coding` whether and how to compress it, and replaces the body. The static files of
:mod:`server.routes_web` are compressed once when they are loaded (:func:`precompress`) and arrive here with
their ``Content-Encoding`` already set: they are passed through.

Theory of operation, per response:

- Left alone: a streamed body (the dashboard's Server-Sent Events: each event must reach the browser when it
  is written, and a compressor would hold it back), one that already has a ``Content-Encoding``, 1xx, 204 and
  304 (no body), and types that do not compress (images).
- Every other response gets ``Vary: Accept-Encoding``, also when it goes out as identity: the same URL may be
  compressed for the next client or when its body grows, and a cache must not hand either one to the other.
- Compressed: bodies of at least ``threshold`` bytes, not for HEAD (no body goes out, so the work would be
  wasted; its headers describe the identity representation, which is one the server may choose), when the
  request's ``Accept-Encoding`` takes gzip, and only when the result is smaller. ``Content-Length`` is the
  compressed length (quart sets it from the body).
- Off the event loop: a body of :data:`THREAD_MIN_BYTES` or more is compressed in a worker thread (zlib releases
  the GIL while it works), so a 1000-message history page does not stall every other connection; smaller ones
  inline, where a thread hop would cost more than the compression.
"""

from __future__ import annotations

from collections.abc import Mapping

import trio
from quart import Quart, Response, request
from quart.wrappers.response import DataBody

from protocol.content_coding import CODECS, DYNAMIC_LEVEL, IDENTITY, add_vary, choose_coding, is_compressible

# 64 KiB: gzip level 5 ran at 100-190 MB/s on history JSON, so inline compression holds the event loop for at
# most about 0.3-0.6 ms, several times trio.to_thread's own hop (about 50 µs); above it the hop is the cheaper
# part. A 100-message page (about 22 KB) stays inline, a 1000-message page (220 KB and up) goes to a thread.
THREAD_MIN_BYTES = 64 * 1024
_NO_BODY = frozenset({204, 304})


def accept_encoding() -> str | None:
    """The request's Accept-Encoding, several header lines joined as one list; None when absent."""
    values = request.headers.getlist("Accept-Encoding")
    return ", ".join(values) if values else None


def _compressible_body(response: Response) -> bytes | None:
    """The body, if this response could go out compressed (to some client, at some size): then it varies."""
    body = response.response
    if (
        not isinstance(body, DataBody)
        or "Content-Encoding" in response.headers
        or response.status_code < 200
        or response.status_code in _NO_BODY
        or not is_compressible(response.content_type)
    ):
        return None
    return body.data


async def _compress(coding: str, body: bytes) -> bytes:
    compress = CODECS[coding]
    if len(body) < THREAD_MIN_BYTES:
        return compress(body, DYNAMIC_LEVEL)
    return await trio.to_thread.run_sync(compress, body, DYNAMIC_LEVEL)


class HttpCompression:
    """``threshold``: the smallest body compressed, in bytes. Below it the header overhead (18 bytes of gzip
    framing) and the CPU outweigh the saving: a 1 KiB JSON body rarely shrinks by more than a few hundred bytes."""

    def __init__(self, threshold: int = 1024) -> None:
        self.threshold = threshold

    def install(self, app: Quart) -> None:
        """Compress ``app``'s responses. Install it after the app's own hooks: quart runs ``after_request``
        hooks last-registered first, so the access log's duration and the request's span include compressing."""
        app.after_request(self.after_request)

    async def after_request(self, response: Response) -> Response:
        body = _compressible_body(response)
        if body is None:
            return response
        response.headers["Vary"] = add_vary(response.headers.get("Vary"))
        # An ETag names the identity bytes (a static file's own coded forms come with theirs, see precompress).
        if request.method == "HEAD" or len(body) < self.threshold or "ETag" in response.headers:
            return response
        coding = choose_coding(accept_encoding())
        if coding is None or coding == IDENTITY:
            return response
        compressed = await _compress(coding, body)
        if len(compressed) < len(body):
            response.set_data(compressed)
            response.headers["Content-Encoding"] = coding
        return response


def precompress(body: bytes, level: int, threshold: int) -> Mapping[str, bytes]:
    """A static file's compressed forms, coding → bytes: those smaller than ``body``, none below ``threshold``."""
    if len(body) < threshold:
        return {}
    encoded = {coding: compress(body, level) for coding, compress in CODECS.items()}
    return {coding: data for coding, data in encoded.items() if len(data) < len(body)}
