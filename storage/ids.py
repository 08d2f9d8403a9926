"""Identifiers in the original server's format: milliseconds since the epoch, then random base-36.

``1750748195822y3egi8gvs``: sortable by creation time to the millisecond, and 9 random base-36 characters
(36^9 ≈ 10^14) make a collision within one millisecond negligible; the storage's UNIQUE constraint on
``id`` turns the impossible case into an error instead of a silent overwrite.

Ids are not secrets (every member of a room sees them), so they come from a fast PRNG seeded from the OS
at start, not from ``secrets``: a ``getrandom`` syscall per message was a third of the send path's time.
"""

from __future__ import annotations

import os
import random

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_RANDOM_BITS = 46  # 2^46 < 36^9: always fits in 9 base-36 digits
_rng = random.Random(os.urandom(32))


def new_id(now_ms: int) -> str:
    n = _rng.getrandbits(_RANDOM_BITS)
    digits = []
    for _ in range(9):
        n, d = divmod(n, 36)
        digits.append(_ALPHABET[d])
    return str(now_ms) + "".join(digits)
