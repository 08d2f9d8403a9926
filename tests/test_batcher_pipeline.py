"""The batcher's pipeline: the next batch is stored while the last one is settled, never ahead of a failure."""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio.lowlevel

from storage.batcher import WriteBehindBatcher
from storage.records import Appended, NewMessage, StoredMessage


def message(n: int) -> NewMessage:
    return NewMessage(f"m{n}", "room", "ann", f"text {n}", "2026-12-05T00:00:00.000Z", 0)


class Engine:
    """Appends wait until the test lets them finish; the first may be made to fail."""

    def __init__(self, events: list[str], *, fail_first: bool = False) -> None:
        self.events = events
        self.release: list[trio.Event] = []
        self.fail_first = fail_first

    async def append_messages(self, batch: Sequence[NewMessage]) -> list[Appended]:
        self.events.append("store " + " ".join(m.id for m in batch))
        go = trio.Event()
        self.release.append(go)
        await go.wait()
        if self.fail_first:
            self.fail_first = False
            raise ValueError("a bug, not a passing outage: not retried")
        return [Appended(StoredMessage(m.id, m.room_id, 1, m.sender, m.content, m.timestamp, "t")) for m in batch]


class Listener:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def committed(self, batch: list[tuple[NewMessage, None]], results: list[Appended]) -> None:
        self.events.append("settle " + " ".join(m.id for m, _ in batch))

    def failed(self, batch: list[tuple[NewMessage, None]], error: BaseException) -> None:
        self.events.append("fail " + " ".join(m.id for m, _ in batch))


async def wait_for(events: list[str], entry: str) -> None:
    with trio.fail_after(5):
        while entry not in events:
            await trio.lowlevel.checkpoint()


async def start(nursery: trio.Nursery, engine: Engine, events: list[str]) -> WriteBehindBatcher[None]:
    batcher: WriteBehindBatcher[None] = WriteBehindBatcher(
        engine,  # type: ignore[arg-type]  # the two calls the batcher makes
        Listener(events),
        linger=0,
        retry_delays=(),
    )
    await nursery.start(batcher.run)
    return batcher


async def test_the_next_batch_is_handed_to_storage_before_the_last_one_is_settled(nursery: trio.Nursery) -> None:
    events: list[str] = []
    engine = Engine(events)
    batcher = await start(nursery, engine, events)
    await batcher.submit(message(1), None)
    await wait_for(events, "store m1")
    await batcher.submit(message(2), None)
    await batcher.submit(message(3), None)
    engine.release[0].set()
    await wait_for(events, "store m2 m3")
    engine.release[1].set()
    await wait_for(events, "settle m2 m3")
    assert events == ["store m1", "store m2 m3", "settle m1", "settle m2 m3"]
    await batcher.wait_idle()
    assert batcher.queue_depth() == 0


async def test_a_failed_batch_is_settled_before_the_next_is_stored(nursery: trio.Nursery) -> None:
    events: list[str] = []
    engine = Engine(events, fail_first=True)
    batcher = await start(nursery, engine, events)
    await batcher.submit(message(1), None)
    await wait_for(events, "store m1")
    await batcher.submit(message(2), None)
    engine.release[0].set()
    await wait_for(events, "store m2")
    engine.release[1].set()
    await wait_for(events, "settle m2")
    assert events == ["store m1", "fail m1", "store m2", "settle m2"], "nothing stored ahead of a failure"
