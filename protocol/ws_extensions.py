"""``Sec-WebSocket-Extensions`` offers, parsed as RFC 6455 §9.1 writes them, sans-IO.

    extension-list = 1#extension
    extension      = extension-token *( ";" extension-param )
    extension-param = token [ "=" (token | quoted-string) ]

Every header of that name is merged first, as the ``Connection`` tokens are (a client or a proxy may split the
list over several headers). An offer that does not parse (a bad token, an unterminated quoted string, a value
that is not a token once unquoted) is dropped on its own: the offers beside it still count, and the
handshake goes on. Names are compared lower-cased; values are kept as sent (unquoted), so a parameter
given without a value (``client_max_window_bits``) is told apart from one given a value.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

# RFC 7230 §3.2.6: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
# / DIGIT / ALPHA.
_TCHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
_OWS = " \t"

Param = tuple[str, str | None]  # (lower-cased name, value as sent, unquoted; None when there is none)
Offer = tuple[str, list[Param]]  # (lower-cased extension name, its parameters in order, repeats kept)


def is_token(text: str) -> bool:
    return bool(text) and all(c in _TCHARS for c in text)


def extension_offers(headers: Iterable[tuple[bytes, bytes]]) -> list[Offer]:
    """Every well-formed offer of every ``Sec-WebSocket-Extensions`` header, in the order sent."""
    offers: list[Offer] = []
    for key, value in headers:
        if key.lower() == b"sec-websocket-extensions":
            offers.extend(parse_offers(value.decode("latin-1")))
    return offers


def parse_offers(text: str) -> list[Offer]:
    """The offers of one header value; malformed ones are left out, empty list elements skipped."""
    offers = []
    for element in _split(text, ","):
        if element is None:
            continue  # an unterminated quoted string swallowed the rest: nothing after it is trustworthy
        if element.strip(_OWS):
            offer = _parse_offer(element)
            if offer is not None:
                offers.append(offer)
    return offers


def _parse_offer(element: str) -> Offer | None:
    parts = _split(element, ";")
    name = (parts[0] or "").strip(_OWS)
    if not is_token(name):
        return None
    params: list[Param] = []
    for part in parts[1:]:
        if part is None:
            return None
        param = _parse_param(part.strip(_OWS))
        if param is None:
            return None
        params.append(param)
    return name.lower(), params


def _parse_param(text: str) -> Param | None:
    name, equals, value = text.partition("=")
    name = name.rstrip(_OWS)
    if not is_token(name):
        return None
    if not equals:
        return name.lower(), None
    value = value.lstrip(_OWS)
    if value.startswith('"'):
        unquoted = _unquote(value)
        # RFC 6455 §9.1: a quoted value, once unescaped, must still be a token.
        return (name.lower(), unquoted) if unquoted is not None and is_token(unquoted) else None
    return (name.lower(), value) if is_token(value) else None


def _unquote(text: str) -> str | None:
    """A quoted-string that is the whole of ``text``, unescaped; None if it is not one."""
    out = []
    i = 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif c == '"':
            return "".join(out) if i == len(text) - 1 else None
        else:
            out.append(c)
            i += 1
    return None


def _split(text: str, sep: str) -> list[str | None]:
    """``text`` split on ``sep`` outside quoted strings; an unterminated quoted string ends it with a None."""
    parts: list[str | None] = []
    start = 0
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(None if quoted else text[start:])
    return parts
