"""What the request handlers need, bundled and passed explicitly (no globals, no app.config lookups)."""

from __future__ import annotations

import msgspec

from protocol.rest import Limits
from server.passwords import PasswordHasher
from server.rooms import RoomRegistry
from server.tokens import Tokens
from storage.engine import StorageEngine


class Services(msgspec.Struct, frozen=True):
    storage: StorageEngine
    registry: RoomRegistry
    tokens: Tokens
    hasher: PasswordHasher
    limits: Limits
    max_body_bytes: int
