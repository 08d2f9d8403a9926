"""What the request handlers need, bundled and passed explicitly (no globals, no app.config lookups)."""

from __future__ import annotations

from typing import Literal

import msgspec

from protocol.ratelimit import LoginGuard
from protocol.rest import Limits
from server.health import Health
from server.metrics import Metrics
from server.passwords import PasswordHasher
from server.rooms import RoomRegistry
from server.tokens import Tokens
from server.tracing import OFF, Tracing
from storage.engine import StorageEngine


class Services(msgspec.Struct, frozen=True):
    storage: StorageEngine
    registry: RoomRegistry
    tokens: Tokens
    hasher: PasswordHasher
    limits: Limits
    max_body_bytes: int
    health: Health
    login_guard: LoginGuard
    storage_retry_after: int = 2  # seconds, the Retry-After of a 503
    admin_routes: Literal["open", "token", "off"] = "open"
    admin_token: str = ""
    metrics: Metrics | None = None  # HTTP requests and auth failures are counted here
    tracing: Tracing = OFF  # a span per REST request when tracing is on
