"""HTTP response compression decisions (RFC 9110 §8.4 and §12.5.3), sans-IO.

Theory of operation: a response is compressed when four pure questions all say yes, asked here, and the
server layer (:mod:`server.http_compression`) only does what they decide:

- :func:`choose_coding`: which of the codings we can produce does the request's ``Accept-Encoding`` take
  best? Each listed coding has a q-value (``q=0`` refuses it); ``*`` stands for every coding not listed;
  ``identity`` (no coding) is acceptable unless refused by ``identity;q=0`` or by ``*;q=0`` without an
  ``identity`` entry. Among the acceptable codings with the highest q, the server's preference decides, and
  the server prefers compressing (``identity`` comes last). Tokens are case-insensitive, whitespace around
  them is optional, ``x-gzip`` is ``gzip`` (RFC 9110 §8.4.1.3), a coding listed twice counts with its highest
  q (as Node's ``negotiator``, which Express's ``compression`` uses), and a malformed entry is skipped.
- No header at all: identity. The RFC lets a server pick any coding then, but a client that did not ask
  (curl without ``--compressed``, Node's ``xmlhttprequest-ssl``) may not decode one.
- Nothing acceptable (``identity;q=0`` and no coding we have): :func:`choose_coding` says None, and the
  server sends identity anyway rather than a 406 that no client of ours would handle (the RFC allows
  disregarding the header).
- :func:`is_compressible`: text, JSON, JavaScript, SVG: yes; images and other already compressed types: no.

Which codings: gzip only. Every client of this server sends ``gzip`` (browsers, axios in them, python-engineio's
requests, httpx). Brotli would need the ``brotli`` C extension and browsers offer ``br`` only over HTTPS, where a
TLS-terminating proxy usually compresses anyway; it gains about 15% over gzip on JSON. zstd has no standard
library module before Python 3.14 (``compression.zstd``). The registry below takes a coding as one entry when
either is worth its dependency; the negotiation already handles any number of them.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

IDENTITY = "identity"
GZIP = "gzip"

# gzip level 5, one below zlib's default: measured on history pages (tools/compression_probe.py's text), level 5
# gave 8.1x in 1.2 ms on 1000 short messages (223 KB) and 5.7x in 32 ms on 300 of 10,000 characters (3.3 MB);
# level 6 gave 8.5x and 6.4x but took 1.9 ms and 90 ms, level 1 6.9x and 4.5x in 0.6 ms and 16 ms. Level 5 is
# the knee: within 5-11% of level 6's size for a third to two thirds of its CPU, which the chat needs more.
DYNAMIC_LEVEL = 5
# Static files are compressed once, when they are loaded: the slowest, smallest setting costs nothing per request.
STATIC_LEVEL = 9
# wbits 16 + 15: a gzip wrapper (header and CRC-32) around a 32 KiB-window deflate stream. zlib writes mtime 0,
# so the same input gives the same bytes: a static file's gzip ETag stays stable across restarts.
_GZIP_WBITS = 31


def gzip_compress(body: bytes, level: int) -> bytes:
    return zlib.compress(body, level, wbits=_GZIP_WBITS)


# Codings this server can produce, in its order of preference, each with its compressor.
CODECS: Mapping[str, Callable[[bytes, int], bytes]] = MappingProxyType({GZIP: gzip_compress})

_ALIASES = {"x-gzip": GZIP}
# RFC 9110 §5.6.2 token characters; a coding is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §12.4.2 qvalue: 0 to 1 with at most three decimals.
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
_Q_MAX = 1000  # q-values are kept in thousandths: exact, and three decimals are all the grammar allows
_LAST_RESORT = -1  # the q of an identity the header does not mention: acceptable, below any listed q > 0


def _quality(text: str) -> int | None:
    """``q=0.5`` → 500; None when malformed."""
    if _QVALUE.fullmatch(text) is None:
        return None
    whole, _, decimals = text.partition(".")
    return int(whole) * _Q_MAX + int((decimals + "000")[:3])


def _entry(element: str) -> tuple[str, int] | None:
    """One ``coding[;q=value]`` element, coding lower-cased, q in thousandths; None when malformed."""
    coding, *params = (part.strip() for part in element.split(";"))
    if _TOKEN.fullmatch(coding) is None:
        return None
    q = _Q_MAX
    for param in params:
        name, equals, value = param.partition("=")
        if name.strip().lower() != "q":
            continue  # Accept-Encoding defines no other parameter; ignore one rather than the coding
        parsed = _quality(value.strip()) if equals else None
        if parsed is None:
            return None
        q = parsed
    coding = coding.lower()
    return _ALIASES.get(coding, coding), q


def parse_accept_encoding(header: str) -> dict[str, int]:
    """Each coding the header lists (``*`` included) → its q-value in thousandths (0 refuses it, 1000 is q=1).

    Empty elements (``gzip,,br``) are allowed by the list syntax; malformed ones are skipped."""
    qualities: dict[str, int] = {}
    for element in header.split(","):
        if not element.strip():
            continue
        entry = _entry(element)
        if entry is not None:
            coding, q = entry
            qualities[coding] = max(q, qualities.get(coding, 0))
    return qualities


def _q(qualities: Mapping[str, int], coding: str) -> int:
    """How much the client wants ``coding``: its q, the ``*`` q, or for an unmentioned identity the last resort."""
    if coding in qualities:
        return qualities[coding]
    if "*" in qualities:
        return qualities["*"]
    return _LAST_RESORT if coding == IDENTITY else 0


def choose_coding(header: str | None, available: Iterable[str] = CODECS) -> str | None:
    """The coding to send: one of ``available`` (the server's order of preference) or ``identity``.

    ``header`` is the request's Accept-Encoding (several header lines joined with ``,``), None when absent.
    None means nothing is acceptable; see the module docstring for what a server does then."""
    if header is None:
        return IDENTITY
    qualities = parse_accept_encoding(header)
    best, best_q = None, 0
    for coding in (*available, IDENTITY):
        q = _q(qualities, coding)
        if q != 0 and (best is None or q > best_q):  # ties keep the earlier: the server's preference
            best, best_q = coding, q
    return best


_COMPRESSIBLE_APPLICATION = frozenset(
    {"application/json", "application/javascript", "application/xml", "application/manifest+json"}
)


def is_compressible(content_type: str | None) -> bool:
    """Text, JSON, JavaScript, XML and SVG: worth compressing. Images and archives are compressed already."""
    if not content_type:
        return False
    mimetype = content_type.split(";", 1)[0].strip().lower()
    return (
        mimetype.startswith("text/")
        or mimetype in _COMPRESSIBLE_APPLICATION
        or mimetype.endswith(("+json", "+xml"))
        or mimetype == "image/svg+xml"
    )


def add_vary(vary: str | None, field: str = "Accept-Encoding") -> str:
    """The ``Vary`` value with ``field`` in it once (case-insensitive); ``*`` already covers every field."""
    if not vary:
        return field
    names = [name.strip().lower() for name in vary.split(",")]
    if "*" in names or field.lower() in names:
        return vary
    return f"{vary}, {field}"
