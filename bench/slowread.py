"""A slow reader (slow-readers scenario): reads at a fraction of its rooms' rate for a while, then at full speed.

Theory of operation. The lag must be real at the socket level, so the reader does what a slow phone does: it
stops calling ``recv``. During the slow phase each read takes at most ``SLOW_READ`` bytes (a dozen messages),
and after a read that brought ``n`` messages the reader sleeps ``n / allowed_rate`` seconds, where
``allowed_rate`` is ``read_fraction`` x the messages per second its rooms produce (a token bucket in messages,
so the pace is the same fraction whatever a server's payload size). Meanwhile the client's receive buffer fills,
then the server's send buffer, then whatever the server does with the rest: queue it (outbox, RSS), drop it, or
cut the member off. From ``slow_end`` on, reads are full-size and back to back.

What the member observes, O(1) per delivery, for bench/slowreport.py:

- **catch-up**: the arrival time of the last message scheduled before ``slow_end``. Deliveries are in order per
  stream, so once it has arrived the member has everything sent up to that moment (the report checks that none
  of those messages is missing; if one is, the member never caught up);
- **lagging**: the time between consecutive reads whose worst delivery latency is above ``LAGGING_US`` (the gap
  before a read is time the member spent that far behind);
- the worst delivery latency. Disconnects are seen by the worker (the receive loop ends) and never reconnected.
"""

from __future__ import annotations

import time

import msgspec
import trio

SLOW_READ = 4096  # bytes per read while slow: ~15 of the quick preset's messages, so the pace is smooth
FULL_READ = 65536  # as bench/client.py
LAGGING_US = 1_000_000  # a member whose deliveries are more than 1 s late is lagging


class SlowReadStats(msgspec.Struct, frozen=True, array_like=True):
    """What one slow member observed, shipped from the worker. Times are seconds since the load began."""

    member: int
    reads: int
    bytes_read: int
    lagging_s: float
    max_latency_ms: float
    last_old_arrival_s: float  # NaN: no message scheduled before the end of the slow phase arrived


class MemberWatch:
    """The pace and the observations of one slow member; ``Client`` calls it once per read."""

    __slots__ = (
        "_allowed_until_ns",
        "_begin_ns",
        "_last_read_ns",
        "_per_message_ns",
        "bytes_read",
        "lagging_ns",
        "last_old_ns",
        "max_latency_us",
        "member",
        "reads",
        "slow_end_ns",
    )

    def __init__(self, member: int, *, begin_ns: int, slow_for: float, allowed_rate: float) -> None:
        self.member = member
        self._begin_ns = begin_ns
        self.slow_end_ns = begin_ns + int(slow_for * 1e9)
        self._per_message_ns = int(1e9 / allowed_rate) if allowed_rate > 0 else 0
        self._allowed_until_ns = begin_ns
        self._last_read_ns = begin_ns
        self.reads = 0
        self.bytes_read = 0
        self.lagging_ns = 0
        self.last_old_ns = 0  # arrival of the newest delivery of a message scheduled before slow_end
        self.max_latency_us = 0

    def read_size(self) -> int:
        return SLOW_READ if time.monotonic_ns() < self.slow_end_ns else FULL_READ

    def observe(self, now_ns: int, nbytes: int, worst_latency_us: int) -> None:
        """After a read: its size and its worst delivery latency (0 if it held no message)."""
        self.reads += 1
        self.bytes_read += nbytes
        if worst_latency_us > LAGGING_US:
            self.lagging_ns += now_ns - self._last_read_ns
        self._last_read_ns = now_ns
        self.max_latency_us = max(self.max_latency_us, worst_latency_us)

    async def pace(self, messages: int) -> None:
        """While slow: wait until the token bucket allows the messages just read (never past the slow phase)."""
        now = time.monotonic_ns()
        if now >= self.slow_end_ns or not messages or not self._per_message_ns:
            return
        self._allowed_until_ns = max(self._allowed_until_ns, now) + messages * self._per_message_ns
        wake = min(self._allowed_until_ns, self.slow_end_ns)
        await trio.sleep(max(0, wake - now) / 1e9)

    def stats(self) -> SlowReadStats:
        seconds = (self.last_old_ns - self._begin_ns) / 1e9 if self.last_old_ns else float("nan")
        return SlowReadStats(
            self.member,
            self.reads,
            self.bytes_read,
            self.lagging_ns / 1e9,
            self.max_latency_us / 1000,
            seconds,
        )
