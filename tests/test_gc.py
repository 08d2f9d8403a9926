"""The cycle collector under a bombing: per-message records are not tracked (issue 16)."""

from __future__ import annotations

import gc

from protocol.events import AckOk, MessageOut, SendMessage, SendMessageData
from storage.records import Appended, NewMessage, StoredMessage


def test_per_message_records_are_not_tracked_by_the_cycle_collector() -> None:
    """They hold only strings, numbers and each other: no cycle can go through them, and a bombing creates
    hundreds of thousands; untracked, they cost the collector nothing (fewer, shorter collections)."""
    stored = StoredMessage("id", "room", 1, "ann", "hi", "t", "t")
    for record in (
        NewMessage("id", "room", "ann", "hi", "2026-01-01T00:00:00.000Z", 0),
        stored,
        Appended(stored),
        MessageOut("message", "room", "ann", "hi", "t", "id", 1),
        AckOk("id", 1, "t"),
        SendMessage(SendMessageData("room", "hi")),
    ):
        assert not gc.is_tracked(record), type(record).__name__
