"""The per-connection ``send_message`` rate limit: a token bucket on each session, refusals counted.

Why per connection and not per user: the limit is about one socket flooding the ingest queue, which every
other sender then waits behind (backpressure); a user with two tabs gets two budgets, as two clients would.
The default (2000 msg/s, bursts of 4000) is 60 times the load test's fastest client (~33 msg/s per
socket, contract §6.3), so only a client that is broken or hostile ever meets it.
"""

from __future__ import annotations

import trio
from prometheus_client import Counter

from protocol.ratelimit import TokenBucket
from server.session import Session


class SendRateLimit:
    def __init__(self, rate: float, burst: int, refused: Counter) -> None:
        self.rate = rate
        self.burst = burst
        self.refused = refused
        self.refusal = f"Rate limit exceeded: at most {rate:g} messages per second per connection"

    def allow(self, session: Session) -> bool:
        """Take a token from the session's bucket; False (and counted) when it has none."""
        now = trio.current_time()
        bucket = session.send_bucket
        if bucket is None:
            bucket = session.send_bucket = TokenBucket(self.rate, self.burst, now)
        if bucket.take(now):
            return True
        self.refused.inc()
        return False
