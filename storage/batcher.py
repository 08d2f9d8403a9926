"""The write-behind batcher: group commit for chat messages.

Senders ``submit`` into a bounded memory channel and return at once; when the channel is full they wait,
which stops their connection's reader, which fills the client's TCP window: backpressure all the way to
the client, and nothing is dropped. One task drains the channel into batches and commits each batch in
one transaction (one fsync for many messages). A batch is cut when it is full (``max_batch``) or when
``linger`` seconds have passed since its first message, whichever comes first; while a commit runs, the
next batch accumulates, so under load batches grow by themselves and at low load latency stays low.

After each commit the listener's ``committed`` runs (broadcast and acks), in commit order. A commit that
fails is retried with backoff; after the last retry the listener's ``failed`` answers the senders.

Shutdown: when ``run`` is cancelled it stops taking new messages, commits everything already accepted
(shielded: a graceful stop never loses an accepted message), then returns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import trio

from storage.engine import StorageEngine
from storage.records import Appended, NewMessage

log = logging.getLogger(__name__)

T = TypeVar("T")


class CommitListener(Protocol[T]):
    def committed(self, batch: list[tuple[NewMessage, T]], results: list[Appended]) -> None: ...

    def failed(self, batch: list[tuple[NewMessage, T]], error: BaseException) -> None: ...


class BatchObserver(Protocol):
    def observe_batch(self, size: int, seconds: float) -> None: ...


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
        observer: BatchObserver | None = None,
    ) -> None:
        self._engine = engine
        self._listener = listener
        self._max_batch = max_batch
        self._linger = linger
        self._retry_delays = tuple(retry_delays)
        self._observer = observer
        self._send, self._receive = trio.open_memory_channel[tuple[NewMessage, T]](queue_size)
        self._assembling: list[tuple[NewMessage, T]] = []
        self.committed_messages = 0

    async def submit(self, message: NewMessage, ticket: T) -> None:
        """Queue a message; waits only while the queue is full. Raises ClosedResourceError after shutdown."""
        try:
            # No scheduler round trip per message while there is room (the reader checkpoints on its next read).
            self._send.send_nowait((message, ticket))
        except trio.WouldBlock:
            await self._send.send((message, ticket))

    def queue_depth(self) -> int:
        return self._send.statistics().current_buffer_used

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self._commit(await self._next_batch())
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
        # Shielded: once a batch is handed to storage, its outcome must reach the listener even when we are
        # being cancelled, or a committed message would never be broadcast or acked.
        with trio.CancelScope(shield=True):
            messages = [message for message, _ in batch]
            for attempt in range(len(self._retry_delays) + 1):
                started = trio.current_time()
                try:
                    results = await self._engine.append_messages(messages)
                except Exception as exc:
                    if attempt == len(self._retry_delays):
                        self._listener.failed(batch, exc)
                        return
                    log.warning("commit of %d messages failed (%s); retrying", len(batch), exc)
                    await trio.sleep(self._retry_delays[attempt])
                    continue
                if self._observer is not None:
                    self._observer.observe_batch(len(batch), trio.current_time() - started)
                self.committed_messages += len(batch)
                self._listener.committed(batch, results)
                return
