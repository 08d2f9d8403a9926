"""Reading requests and writing JSON replies the way Express does it (contract §1.0)."""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from quart import Response, request

from protocol.rest import RequestError
from server.tokens import Tokens, bearer_token

_encoder = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(body), status=status, content_type="application/json; charset=utf-8")


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or mimetype.endswith("+json")


async def read_body() -> Any:
    """The request body as Express's json/urlencoded parsers would give it.

    JSON (``application/json``) and urlencoded forms are parsed; any other type, or no body, counts as
    ``{}`` so the route answers with its own 400. Malformed JSON is a 400 with a JSON error, and a
    top-level value that is not an object or array is refused as Express's strict parser refuses it.
    """
    data = await request.get_data(cache=True, as_text=False, parse_form_data=False)  # 413 past the limit
    mimetype = request.mimetype
    if not data:
        return {}
    if _is_json(mimetype):
        try:
            body = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise RequestError(400, f"Malformed JSON body: {exc}") from None
        if not isinstance(body, dict | list):
            raise RequestError(400, "The JSON body must be an object or an array")
        return body
    if mimetype == "application/x-www-form-urlencoded":
        text = data.decode("utf-8", errors="replace")
        return dict(parse_qsl(text, keep_blank_values=True))
    return {}


def authenticated_user(tokens: Tokens) -> str:
    """The caller's username from ``Authorization: <scheme> <jwt>``: 401 when absent, 403 when invalid.

    The frontend logs the user out on 401 but not on 403 (contract §1.1), so the split matters.
    """
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise RequestError(401, "Access token required")
    username = tokens.username(token)
    if username is None:
        raise RequestError(403, "Invalid or expired token")
    return username


def client_ip() -> str:
    """The TCP peer's address (a proxy's, behind one: X-Forwarded-For is not trusted, anyone can send it)."""
    return request.remote_addr or "unknown"


def admin_gate(mode: str, admin_token: str) -> None:
    """The ``--admin-routes`` check for the two delete-all routes; returns when the request may go on.

    ``open``: the original's behaviour (the route does its own checks). ``off``: 404 as an unknown route.
    ``token``: ``Authorization: <scheme> <admin token>``, read as the contract's auth middleware reads a
    JWT (§1.1); anything else is 403, which the frontend does not treat as a logout (a 401 would be).
    """
    if mode == "open":
        return
    if mode == "off":
        raise RequestError(404, f"Cannot {request.method} {request.path}")
    given = bearer_token(request.headers.get("Authorization")) or ""
    # compare_digest: the time taken does not tell a guesser how many leading characters were right.
    if not (admin_token and hmac.compare_digest(given.encode(), admin_token.encode())):
        raise RequestError(403, "Admin token required: this server runs with --admin-routes token")
