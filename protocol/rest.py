"""Validation of MinitalkChat REST request bodies and query strings (contract §1), sans-IO.

Each function takes the decoded JSON body (any JSON value) and returns typed values or raises
:class:`RequestError` with the status and the exact ``error`` text to send. The texts of the original
are kept where it had one; where the original crashed with a 500 (wrong types, a missing room name),
we answer 400 with a message that says what to send instead (README, "Compatibility notes").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

HISTORY_DEFAULT_LIMIT = 100
HISTORY_MAX_LIMIT = 1000
# The largest seq a cursor may name: JavaScript's Number.MAX_SAFE_INTEGER (2^53 - 1), the largest integer a
# JS client holds exactly, and far below SQLite's 2^63 - 1, past which binding the value raises OverflowError.
MAX_SEQ = 2**53 - 1
# An integer parameter longer than this is refused before int() sees it: no bound needs more digits
# (MAX_SEQ has 16), and int() of a many-thousand-digit string costs time or raises ValueError.
MAX_INT_PARAM_CHARS = 20


class RequestError(Exception):
    """The client sent something we will not act on. ``status`` and ``message`` form the reply, and
    ``retry_after`` (seconds), when set, a ``Retry-After`` header (429: when trying again is worth it)."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class Limits(msgspec.Struct, frozen=True):
    max_batch_items: int
    max_participants: int
    max_name_chars: int


class HistoryParams(msgspec.Struct, frozen=True):
    limit: int = HISTORY_DEFAULT_LIMIT
    after_seq: int | None = None
    before_seq: int | None = None
    since: str | None = None


def js_falsy(value: Any) -> bool:
    """JavaScript's falsy values as they arrive from JSON: missing/null, false, 0, and ""."""
    if value is None or value is False or value == "":
        return True
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def _field(body: Any, name: str) -> Any:
    return body.get(name) if isinstance(body, dict) else None


def _check_name(value: str, what: str, limits: Limits) -> None:
    if len(value) > limits.max_name_chars:
        raise RequestError(400, f"{what} must be at most {limits.max_name_chars} characters")
    if "\x00" in value:  # no storage engine is ever given U+0000 (PostgreSQL's text cannot hold it)
        raise RequestError(400, f"{what} must not contain the character U+0000")


def credentials(body: Any, limits: Limits) -> tuple[str, str]:
    """``{username, password}`` for signup and login."""
    username, password = _field(body, "username"), _field(body, "password")
    if js_falsy(username) or js_falsy(password):
        raise RequestError(400, "Username and password are required")
    if not isinstance(username, str) or not isinstance(password, str):
        raise RequestError(400, "Username and password must be strings")
    _check_name(username, "Username", limits)
    return username, password


def credential_list(body: Any, limits: Limits) -> list[tuple[str, str]]:
    """``{users: [{username, password}, ...]}`` for signup-batch and login-batch."""
    users = _field(body, "users")
    if not isinstance(users, list) or not users:
        raise RequestError(400, "Users array is required")
    _check_count(len(users), "users", limits)
    pairs: list[tuple[str, str]] = []
    for user in users:
        username, password = _field(user, "username"), _field(user, "password")
        if js_falsy(username) or js_falsy(password):
            raise RequestError(400, "All users must have username and password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise RequestError(400, "All usernames and passwords must be strings")
        _check_name(username, "Username", limits)
        pairs.append((username, password))
    return pairs


def confirmation(body: Any, expected: str) -> None:
    if _field(body, "confirmationCode") != expected:
        raise RequestError(400, "Invalid confirmation code. This is a dangerous operation!")


def _usernames(value: Any, limits: Limits, error: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RequestError(400, error)
    if len(value) > limits.max_participants:
        raise RequestError(400, f"A room can have at most {limits.max_participants} participants")
    for name in value:
        _check_name(name, "Username", limits)
    return value


def room_spec(body: Any, limits: Limits) -> tuple[str, list[str]]:
    """``{name, participants?}`` for a new room."""
    name = _field(body, "name")
    if js_falsy(name):
        raise RequestError(400, "Room name is required")
    if not isinstance(name, str):
        raise RequestError(400, "Room name must be a string")
    _check_name(name, "Room name", limits)
    if not isinstance(body, dict) or "participants" not in body:
        return name, []
    error = "participants must be an array of usernames (non-empty strings)"
    return name, _usernames(body["participants"], limits, error)


def room_specs(body: Any, limits: Limits) -> list[tuple[str, list[str]]]:
    """``{rooms: [{name, participants?}, ...]}``: all valid or none created."""
    rooms = _field(body, "rooms")
    if not isinstance(rooms, list) or not rooms:
        raise RequestError(400, "Rooms array is required")
    _check_count(len(rooms), "rooms", limits)
    return [room_spec(room, limits) for room in rooms]


def invitees(body: Any, limits: Limits) -> list[str]:
    participants = _field(body, "participants")
    if not isinstance(participants, list):
        raise RequestError(400, "Participants array is required")
    return _usernames(participants, limits, "Participants must be usernames (non-empty strings)")


def history_params(query: Mapping[str, str]) -> HistoryParams:
    """``limit`` (1-1000), ``after_seq`` / ``before_seq`` (integers 0 to 2^53 - 1), ``since`` (a date)."""
    limit = _int_param(query, "limit", low=1, high=HISTORY_MAX_LIMIT)
    return HistoryParams(
        limit=HISTORY_DEFAULT_LIMIT if limit is None else limit,
        after_seq=_int_param(query, "after_seq", low=0, high=MAX_SEQ),
        before_seq=_int_param(query, "before_seq", low=0, high=MAX_SEQ),
        since=query.get("since"),
    )


def _int_param(query: Mapping[str, str], name: str, *, low: int, high: int) -> int | None:
    """A bounded decimal integer, or None when absent; anything else (signs, non-ASCII digits, too many
    digits, out of range) is a 400, so no later layer ever sees an integer it cannot store."""
    raw = query.get(name)
    if raw is None:
        return None
    text = raw.strip()
    if len(text) > MAX_INT_PARAM_CHARS or not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise RequestError(400, f"{name} must be an integer from {low} to {high}")
    return int(text)


def _check_count(count: int, what: str, limits: Limits) -> None:
    if count > limits.max_batch_items:
        raise RequestError(400, f"At most {limits.max_batch_items} {what} per batch request")
