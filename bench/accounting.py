"""Delivery accounting: loss, duplication and reordering, detected per message stream. Pure, no I/O.

Every message the load generator sends carries ``<scheduled send ns>|<sender>|<n>|`` at the start of its
content, where ``n`` counts that sender's messages *to that room* from 0. A (sender, room) pair is a
**stream**; each member of the room must see each stream's ``n`` exactly once and in order (a server keeps
one connection's sends in order, contract §3.6-9). This works against any server, including peers whose
``message`` payload has no ``seq``.

:class:`StreamTracker` is the receiver's O(1)-per-delivery state; :func:`settle` turns what every member saw
and what every sender had accepted into the run's totals.
"""

from __future__ import annotations

import msgspec


class StreamTracker:
    """What one member saw of one stream, in O(1) per delivery and memory bounded by the gaps."""

    __slots__ = ("delivered", "duplicates", "missing", "next", "out_of_order")

    def __init__(self) -> None:
        self.next = 0  # every n below this was seen, or is in ``missing``
        self.missing: set[int] = set()
        self.delivered = 0
        self.duplicates = 0
        self.out_of_order = 0

    def see(self, n: int) -> None:
        self.delivered += 1
        if n == self.next:
            self.next += 1
        elif n > self.next:
            self.missing.update(range(self.next, n))  # skipped: lost, unless they arrive late
            self.next = n + 1
        elif n in self.missing:
            self.missing.discard(n)
            self.out_of_order += 1
        else:
            self.duplicates += 1

    def unique(self) -> int:
        return self.next - len(self.missing)

    def summary(self) -> StreamSummary:
        return StreamSummary(self.next, sorted(self.missing), self.delivered, self.duplicates, self.out_of_order)


class StreamSummary(msgspec.Struct, frozen=True, array_like=True):
    """A tracker's final state, small enough to ship from a worker process."""

    next: int
    missing: list[int]
    delivered: int
    duplicates: int
    out_of_order: int


class Totals(msgspec.Struct, frozen=True):
    expected: int
    delivered: int
    lost: int
    duplicated: int
    out_of_order: int
    # Deliveries of messages the server broadcast but whose ack had not reached the sender when the run
    # ended (a server that falls behind): neither expected nor duplicates.
    unacked: int = 0


def settle(
    accepted: dict[tuple[int, int], int],
    seen: dict[tuple[int, int, int], StreamSummary],
    members: dict[int, list[int]],
    counted: dict[int, int] | None = None,
    *,
    lenient: set[int] | None = None,
    written: dict[tuple[int, int], int] | None = None,
) -> Totals:
    """Totals for a run.

    ``accepted[(sender, room)]``: messages of that stream the server accepted (acked, or sent for servers
    without acks), numbered 0..k-1. ``seen[(member, sender, room)]``: what a checking member saw of the stream.
    ``members[room]``: the members that read for the whole run. ``counted[member]``: deliveries a count-only
    member received in all its rooms; for those, loss and duplication are found in aggregate (fewer or more
    deliveries than accepted messages), and order is not checked. ``lenient`` members (the mixed scenario's
    churners) take each message once by seq, live or from history catch-up: only their losses count.
    ``written[(sender, room)]``: messages of that stream the sender wrote, acked or not; a count-only member's
    deliveries beyond the accepted ones but within the written ones are ``unacked``, not duplicates (without
    ``written``, every delivery beyond the accepted ones counts as a duplicate).
    """
    lenient = lenient or set()
    counted = counted or {}
    written = written or {}
    expected = delivered = lost = duplicated = out_of_order = unacked = 0
    owed: dict[int, int] = {}
    ceiling: dict[int, int] = {}  # most deliveries a count-only member could get without a duplicate
    streams = set(accepted) | set(written)
    for sender, room in streams:
        count = accepted.get((sender, room), 0)
        for member in members.get(room, []):
            expected += count
            if member in counted:
                owed[member] = owed.get(member, 0) + count
                ceiling[member] = ceiling.get(member, 0) + max(count, written.get((sender, room), 0))
                continue
            summary = seen.get((member, sender, room))
            if summary is None:
                lost += count
                continue
            # Numbers at or past ``count`` are messages the server broadcast but never acked: not expected.
            missing_within = sum(1 for n in summary.missing if n < count)
            lost += count - (min(summary.next, count) - missing_within)
            unacked += max(0, summary.next - count) - (len(summary.missing) - missing_within)
            delivered += summary.delivered
            if member not in lenient:
                duplicated += summary.duplicates
                out_of_order += summary.out_of_order
    for member, got in counted.items():
        delivered += got
        lost += max(0, owed.get(member, 0) - got)
        top = max(owed.get(member, 0), ceiling.get(member, 0))
        unacked += max(0, min(got, top) - owed.get(member, 0))
        duplicated += max(0, got - top)
    return Totals(expected, delivered, lost, duplicated, out_of_order, unacked)
