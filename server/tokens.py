"""JWTs exactly as the original issues and checks them (contract §2).

HS256, header ``{"alg":"HS256","typ":"JWT"}``, payload ``{username, iat, exp = iat + 24 h}``. Verification
accepts HS256/384/512 (jsonwebtoken's defaults for a string secret), enforces ``exp`` with no leeway,
accepts a token without ``exp``, and does not look the user up: a signed token outlives its user.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import jwt

TOKEN_LIFETIME_S = 24 * 60 * 60
_ALGORITHMS = ["HS256", "HS384", "HS512"]


# RFC 7518 asks for HS256 keys of at least 32 bytes; the contract's default secret is 15.
MIN_SECRET_BYTES = 32


@contextmanager
def _quiet_short_key() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        yield


class Tokens:
    def __init__(self, secret: str) -> None:
        self._secret = secret
        # A short secret is reported once, loudly, at start (server/__main__.py). PyJWT would warn on
        # every token it signs or checks, which floods the log and says nothing new.
        self.short_secret = len(secret.encode()) < MIN_SECRET_BYTES

    def _quiet(self) -> AbstractContextManager[None]:
        # Always quiet: HS384/HS512 tokens are held to longer minimums (48/64 bytes) than HS256.
        return _quiet_short_key()

    def issue(self, username: str, *, now: float | None = None) -> str:
        iat = int(time.time() if now is None else now)
        with self._quiet():
            return jwt.encode(
                {"username": username, "iat": iat, "exp": iat + TOKEN_LIFETIME_S},
                self._secret,
                algorithm="HS256",
            )

    def username(self, token: str) -> str | None:
        """The token's username, or None when the token is not valid (bad signature, expired, malformed)."""
        try:
            # jsonwebtoken does not reject an iat in the future; neither do we.
            with self._quiet():
                claims = jwt.decode(token, self._secret, algorithms=_ALGORITHMS, options={"verify_iat": False})
        except jwt.PyJWTError:
            return None
        name = claims.get("username")
        return name if isinstance(name, str) and name else None


def bearer_token(authorization: str | None) -> str | None:
    """The original's parsing: split the header on one space, take the second piece (``Bearer <jwt>``).

    A bare token with no space yields nothing, as in the original.
    """
    if not authorization:
        return None
    pieces = authorization.split(" ")
    return pieces[1] or None if len(pieces) > 1 else None
