"""Rate limits as token buckets, sans-IO: every method takes ``now`` (seconds, any monotonic clock).

Theory of operation: a bucket holds up to ``burst`` tokens and refills at ``rate`` tokens a second; an
action that finds a token takes it, one that finds none is refused. Refill is computed lazily from the
time since the last look, so a bucket is two floats and costs nothing while nobody uses it.

* :class:`TokenBucket`: one bucket (a connection's ``send_message`` rate).
* :class:`KeyedBuckets`: a bucket per key (an IP, a username) in a table whose size is bounded: a bucket
  that has refilled completely is forgotten (a fresh one would be identical), and past ``max_keys`` the
  least recently charged one goes first.
* :class:`LoginGuard`: failed logins per username and per client IP, checked before bcrypt runs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1 (got rate={rate}, burst={burst})")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:  # a clock that steps back refills nothing rather than draining
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are that many; False (nothing taken) otherwise."""
        self._refill(now)
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True

    def charge(self, now: float, cost: float = 1.0) -> None:
        """Take ``cost`` tokens whatever is left (down to zero): for costs known only afterwards."""
        self._refill(now)
        self.tokens = max(0.0, self.tokens - cost)

    def wait(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are there; 0.0 when they are now."""
        self._refill(now)
        return max(0.0, (cost - self.tokens) / self.rate)

    def full_at(self) -> float:
        """When the bucket will be full again if nothing is taken (for forgetting idle buckets)."""
        return self.stamp + (self.burst - self.tokens) / self.rate


class KeyedBuckets:
    """A token bucket per key, ``attempts`` per ``window`` seconds each, at most ``max_keys`` remembered."""

    def __init__(self, attempts: int, window: float, *, max_keys: int) -> None:
        self.attempts = attempts
        self.rate = attempts / window
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()  # least recently charged first

    def __len__(self) -> int:
        return len(self._buckets)

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again; 0.0 when it may now. Takes nothing."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.wait(now)

    def charge(self, key: str, now: float) -> None:
        """Count one attempt against ``key``."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.attempts, now)
        bucket.charge(now)
        self._buckets[key] = bucket
        self._forget(now)

    def _forget(self, now: float) -> None:
        # Oldest first: a bucket charged earlier is full no later than one charged since, nearly always
        # (not exactly: the order is by last charge, not by level), so the scan stops at the first live one.
        while self._buckets:
            key, oldest = next(iter(self._buckets.items()))
            if len(self._buckets) <= self.max_keys and oldest.full_at() > now:
                return
            del self._buckets[key]


class LoginGuard:
    """Failed logins per username and per client IP. ``attempts = 0`` turns that limit off.

    Only failures are counted: the load test's hundreds of successful logins from one address never
    come near a limit. A batch request counts once against its IP and once per failed username.
    """

    def __init__(self, attempts: int, ip_attempts: int, window: float, *, max_keys: int = 100_000) -> None:
        self._users = KeyedBuckets(attempts, window, max_keys=max_keys) if attempts else None
        self._ips = KeyedBuckets(ip_attempts, window, max_keys=max_keys) if ip_attempts else None

    def ip_wait(self, ip: str, now: float) -> float:
        return 0.0 if self._ips is None else self._ips.wait(ip, now)

    def user_wait(self, username: str, now: float) -> float:
        return 0.0 if self._users is None else self._users.wait(username, now)

    def failed(self, ip: str, usernames: Iterable[str], now: float) -> None:
        """One request from ``ip`` failed for each of ``usernames`` (at least one)."""
        if self._ips is not None:
            self._ips.charge(ip, now)
        if self._users is not None:
            for name in usernames:
                self._users.charge(name, now)

    def table_sizes(self) -> tuple[int, int]:
        """(usernames, IPs) remembered: both bounded by ``max_keys``."""
        return (len(self._users or ()), len(self._ips or ()))


def retry_after(seconds: float) -> int:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds))
