"""The write-behind batcher: group commit for chat messages.

Theory of operation. A sender first takes a *slot* (``wait_for_room``: at most ``queue_size`` messages are
accepted and not yet committed; when none is free the sender waits, which stops its connection's reader,
which fills the client's TCP window: backpressure all the way to the client, and nothing is dropped), then
hands its message over with ``submit_nowait``, with no await in between. A slot is given back only when the
message's batch is committed or has definitely failed, so ``queue_size`` bounds everything in flight,
the batch being committed included: in fast mode that is also the bound on what a crash can lose, and on
the seqs it can leave unused (see ``server/hub.py``).

One task drains the queue into batches and commits each batch in one transaction (one fsync for many
messages). A batch is cut when it is full (``max_batch``) or when ``linger`` seconds have passed since its
first message, whichever comes first; while a commit runs, the next batch accumulates, so under load
batches grow by themselves and at low load latency stays low. Under load the next batch is handed to storage as
soon as the last one is stored, and the last one is settled (broadcast, acks) while the next one commits: the
event loop's work and storage's overlap instead of taking turns (``_pipeline``).

After each commit the listener's ``committed`` runs (broadcast and acks), in commit order. A commit that
fails is retried with backoff: while the database refuses for now (``StorageUnavailableError``: a restart,
a lock, a full disk), for up to ``outage_budget`` seconds, a few times otherwise. Then either the listener's
``failed`` answers the senders (durable mode: nobody saw those messages yet), or, with ``retry_until_stored``
(fast mode: members already saw them), an unavailable database is retried for as long as the process runs.
While a batch is retried its slots stay taken, so senders are backpressured while storage is down, and
``health`` says the server is not ready until a commit succeeds again.

Shutdown: ``begin_shutdown(deadline)`` bounds the retries; when ``run`` is cancelled it stops taking new
messages, commits everything already accepted (shielded: a graceful stop never loses an accepted message
while storage works), then returns.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Generic, NamedTuple, Protocol, TypeVar

import trio

from storage.engine import StorageEngine
from storage.errors import StorageUnavailableError
from storage.records import Appended, NewMessage

log = logging.getLogger(__name__)

T = TypeVar("T")


class CommitListener(Protocol[T]):
    def committed(self, batch: list[tuple[NewMessage, T]], results: list[Appended]) -> None: ...

    def failed(self, batch: list[tuple[NewMessage, T]], error: BaseException) -> None: ...


class BatchObserver(Protocol):
    def observe_batch(self, size: int, seconds: float) -> None: ...


class StorageHealth(Protocol):
    """Who is told that commits fail and that they work again (the server's readiness)."""

    def storage_failed(self, reason: str) -> None: ...

    def storage_recovered(self) -> None: ...


class _Outcome(NamedTuple):
    """How storing one batch ended: its results, or the error it failed with after the retries."""

    results: list[Appended] | None
    error: Exception | None
    commit_ns: tuple[int, int]  # when the successful attempt started and ended (wall clock, ns)


class WriteBehindBatcher(Generic[T]):
    def __init__(
        self,
        engine: StorageEngine,
        listener: CommitListener[T],
        *,
        max_batch: int = 2048,
        linger: float = 0.002,
        queue_size: int = 16384,
        retry_delays: Sequence[float] = (0.05, 0.25, 1.0),
        retry_until_stored: bool = False,
        outage_budget: float = 30.0,
        observer: BatchObserver | None = None,
        health: StorageHealth | None = None,
    ) -> None:
        self._engine = engine
        self._listener = listener
        self._max_batch = max_batch
        self._linger = linger
        self._retry_delays = tuple(retry_delays)
        self._retry_until_stored = retry_until_stored
        self._outage_budget = outage_budget
        self._observer = observer
        self.health = health
        self.queue_size = queue_size
        self._slots = trio.Semaphore(queue_size)
        # Unbounded on purpose: the slots bound it, and they count the batch being committed too.
        self._send, self._receive = trio.open_memory_channel[tuple[NewMessage, T]](math.inf)
        self._assembling: list[tuple[NewMessage, T]] = []
        self._give_up_at = math.inf
        self._settled = trio.Event()  # set and replaced after every batch that is committed or failed
        self._failing = False
        self.committed_messages = 0
        # The last successful commit's start and end (wall clock, ns): when traced messages' spans were committed.
        self.last_commit_ns = (0, 0)
        self.failed_messages = 0

    async def wait_for_room(self) -> None:
        """Take a slot for one message; waits only while ``queue_size`` messages are in flight."""
        try:
            # No scheduler round trip per message while there is room (the reader checkpoints on its next read).
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            await self._slots.acquire()

    def release_room(self) -> None:
        """Give back a slot taken by ``wait_for_room`` for a message that was not submitted after all."""
        self._slots.release()
        self._settled.set()  # wait_idle may be waiting for exactly this slot
        self._settled = trio.Event()

    def submit_nowait(self, message: NewMessage, ticket: T) -> None:
        """Queue a message for which a slot was taken. Raises ClosedResourceError after shutdown."""
        self._send.send_nowait((message, ticket))

    async def submit(self, message: NewMessage, ticket: T) -> None:
        """Take a slot and queue the message (waits only while the queue is full)."""
        await self.wait_for_room()
        self.submit_nowait(message, ticket)

    def queue_depth(self) -> int:
        """Messages accepted and not yet committed (or failed)."""
        return self.queue_size - self._slots.value

    async def wait_idle(self) -> None:
        """Return once every message accepted so far has been committed (or has definitely failed)."""
        while self.queue_depth():
            await self._settled.wait()

    def begin_shutdown(self, deadline: float) -> None:
        """From ``deadline`` on, a failing commit is not retried any more: its senders get ``failed``."""
        self._give_up_at = deadline

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                batch = await self._next_batch()
                # Shielded from here on: once a batch is handed to storage, its outcome must reach the listener
                # even when we are being cancelled, or a committed message would never be broadcast or acked.
                with trio.CancelScope(shield=True):
                    await self._pipeline(batch, await self._store(batch))
        finally:
            with trio.CancelScope(shield=True):
                await self._drain()

    async def _next_batch(self) -> list[tuple[NewMessage, T]]:
        # The batch being assembled lives on self, so a cancellation mid-assembly cannot lose what was taken.
        batch = self._assembling = [await self._receive.receive()]
        deadline = trio.current_time() + self._linger
        while len(batch) < self._max_batch:
            try:
                batch.append(self._receive.receive_nowait())
                continue
            except trio.WouldBlock:
                pass
            if self._linger <= 0 or trio.current_time() >= deadline:
                break
            with trio.move_on_at(deadline):
                batch.append(await self._receive.receive())
        self._assembling = []
        return batch

    async def _drain(self) -> None:
        self._send.close()  # later submits fail fast instead of waiting forever
        pending, self._assembling = self._assembling, []
        while True:
            try:
                pending.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        if pending:
            log.info("flushing %d accepted messages before shutdown", len(pending))
        for start in range(0, len(pending), self._max_batch):
            await self._commit(pending[start : start + self._max_batch])

    async def _commit(self, batch: list[tuple[NewMessage, T]]) -> None:
        """Store one batch (with retries) and settle it: the drain at shutdown, one batch after another."""
        with trio.CancelScope(shield=True):
            self._settle(batch, await self._store(batch))

    async def _pipeline(self, batch: list[tuple[NewMessage, T]], outcome: _Outcome) -> None:
        """Settle ``batch`` while the next one is being stored, for as long as messages keep coming.

        Settling (the listener's broadcasts and acks) runs on the event loop; storing runs in the engine's
        thread or connection. Handing the next batch over before settling this one lets the two overlap instead
        of taking turns. Order is kept: a batch is handed over only after the one before it was stored (a
        failed batch is settled first, so a later batch can never be stored ahead of it), and batches are
        settled in the order they were stored. Called shielded.
        """
        while True:
            waiting = self._take_waiting() if outcome.results is not None else []
            if not waiting:
                self._settle(batch, outcome)
                return
            result: list[_Outcome] = []
            async with trio.open_nursery() as nursery:
                # Returns once the batch is in storage's queue (engines queue a call before their first await).
                await nursery.start(self._store_into, waiting, result)
                self._settle(batch, outcome)
            batch, outcome = waiting, result[0]

    def _take_waiting(self) -> list[tuple[NewMessage, T]]:
        """What is queued right now (up to a batch), without waiting: the next batch of a busy pipeline."""
        batch: list[tuple[NewMessage, T]] = []
        while len(batch) < self._max_batch:
            try:
                batch.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return batch

    async def _store_into(
        self, batch: list[tuple[NewMessage, T]], out: list[_Outcome], *, task_status: trio.TaskStatus[None]
    ) -> None:
        out.append(await self._store(batch, handed=task_status.started))

    async def _store(self, batch: list[tuple[NewMessage, T]], *, handed: Callable[[], None] | None = None) -> _Outcome:
        """Append a batch, retrying as ``_retry`` allows: its results, or the error it finally failed with.

        ``handed`` is called once, just before the first attempt, whose call queues the batch in storage.
        """
        messages = [message for message, _ in batch]
        attempt = 0
        first_failure = math.inf
        while True:
            started = trio.current_time()
            started_ns = time.time_ns()
            if handed is not None:
                handed()
                handed = None
            try:
                results = await self._engine.append_messages(messages)
            except Exception as exc:
                first_failure = min(first_failure, started)
                if not self._retry(attempt, len(batch), exc, trio.current_time() - first_failure):
                    return _Outcome(None, exc, (0, 0))
                await trio.sleep(self._retry_delays[min(attempt, len(self._retry_delays) - 1)])
                attempt += 1
                continue
            if self._observer is not None:
                self._observer.observe_batch(len(batch), trio.current_time() - started)
            return _Outcome(results, None, (started_ns, time.time_ns()))

    def _retry(self, attempt: int, size: int, error: Exception, failing_for: float) -> bool:
        """Whether to try a failed commit again; tells ``health`` that storage is failing."""
        if self.health is not None:  # every time: a REST write that got through must not hide failing commits
            self.health.storage_failed(f"commits are failing: {error}")
        self._failing = True
        # Forever only while the database refuses for now; a bug (an IntegrityError, a bad statement) would fail
        # the same way every time and hold every slot.
        if (
            isinstance(error, StorageUnavailableError)
            and (self._retry_until_stored or failing_for < self._outage_budget)
            and trio.current_time() < self._give_up_at
        ):
            if attempt == len(self._retry_delays):  # one line per episode, not one per retry
                until = "it is stored" if self._retry_until_stored else f"{self._outage_budget:g} s have passed"
                log.error("commit of %d messages still failing (%s); retrying until %s", size, error, until)
            elif attempt < len(self._retry_delays):
                log.warning("commit of %d messages failed (%s); retrying", size, error)
            return True
        if attempt < len(self._retry_delays) and trio.current_time() < self._give_up_at:
            log.warning("commit of %d messages failed (%s); retrying", size, error)
            return True
        return False

    def _settle(self, batch: list[tuple[NewMessage, T]], outcome: _Outcome) -> None:
        """Hand the outcome to the listener, then free the batch's slots."""
        results, error = outcome.results, outcome.error
        try:
            if results is not None:
                self.last_commit_ns = outcome.commit_ns
                if self._failing:
                    self._failing = False
                    log.info("commits work again")
                    if self.health is not None:
                        self.health.storage_recovered()
                self.committed_messages += len(batch)
                self._listener.committed(batch, results)
            else:
                assert error is not None
                self.failed_messages += len(batch)
                self._listener.failed(batch, error)
        except Exception:
            # The listener's fault must not end the batcher (and with it the process): log it, carry on.
            log.exception("the commit listener raised on a batch of %d messages", len(batch))
        finally:
            for _ in batch:
                self._slots.release()
            self._settled.set()
            self._settled = trio.Event()
