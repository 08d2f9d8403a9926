"""Outbound bytes for one socket, written without an await per message and without a task per member.

Theory of operation. A broadcast calls ``Outbox.push(frame)`` on every member: an append and a counter,
no await, no task wake-up. The first push since the last write puts the outbox on the :class:`Flusher`'s
dirty list; the flusher task wakes once per scheduler tick and does one non-blocking ``writev`` per dirty
outbox, so many messages to one member cost one syscall. If the kernel's send buffer is full the write
raises BlockingIOError: the outbox is then *blocked*, and only then does its own writer task wake, to wait
until the socket is writable and finish the job. A member that falls further behind than the bounds
(bytes or messages) is cut off through ``on_overflow``: it can never stall the room or grow memory.

Every write to the socket goes through here (the handshake response too), so writes never interleave.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable

import trio

IOV_MAX = 1024  # Linux's limit on buffers per writev


class Outbox:
    __slots__ = (
        "_chunks",
        "_fd",
        "_flusher",
        "_lot",
        "_max_bytes",
        "_max_messages",
        "_on_overflow",
        "blocked",
        "closed",
        "nbytes",
        "scheduled",
    )

    def __init__(
        self,
        fd: int,
        flusher: Flusher,
        *,
        max_bytes: int,
        max_messages: int,
        on_overflow: Callable[[str], None],
    ) -> None:
        self._fd = fd
        self._flusher = flusher
        self._chunks: deque[bytes | memoryview] = deque()
        self._max_bytes = max_bytes
        self._max_messages = max_messages
        self._on_overflow = on_overflow
        self._lot = trio.lowlevel.ParkingLot()
        self.nbytes = 0
        self.blocked = False
        self.scheduled = False
        self.closed = False

    def __len__(self) -> int:
        return len(self._chunks)

    def push(self, data: bytes) -> bool:
        """Queue bytes; False (and the overflow callback) when the bound is passed or the outbox is closed."""
        if self.closed:
            return False
        if self.nbytes + len(data) > self._max_bytes or len(self._chunks) >= self._max_messages:
            self.closed = True
            self._on_overflow(
                f"outbox full ({self.nbytes} bytes in {len(self._chunks)} messages;"
                f" limits {self._max_bytes} bytes / {self._max_messages} messages)"
            )
            return False
        self._chunks.append(data)
        self.nbytes += len(data)
        if not self.scheduled and not self.blocked:
            self.scheduled = True
            self._flusher.schedule(self)
        return True

    def push_close(self, data: bytes) -> bool:
        """Queue the connection's close frame, its last bytes: every later push is refused.

        RFC 6455 §5.5.1: nothing may follow a close frame, and one connection has one. The reader queues a
        close (protocol error, or the answer to the client's) and then the session is closed, which would
        queue a second one; marking the outbox closed here is what makes that second push a no-op. What is
        queued is still written (``write_now`` drains a closed outbox that holds bytes).
        """
        queued = self.push(data)
        self.closed = True
        return queued

    def write_now(self) -> None:
        """One non-blocking writev of what is queued; on a full socket buffer, hand over to the writer task."""
        self.scheduled = False
        if self.closed and not self._chunks:
            return
        while self._chunks:
            try:
                sent = os.writev(self._fd, list(_head(self._chunks, IOV_MAX)))
            except BlockingIOError:
                self.blocked = True
                self._lot.unpark()
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                self._fail()
                return
            self._consume(sent)
            if self._chunks and sent and len(self._chunks) <= IOV_MAX:
                # A partial write means the kernel buffer is full: do not spin on EAGAIN, wait for writable.
                self.blocked = True
                self._lot.unpark()
                return

    async def run_writer(self) -> None:
        """The slow path: sleeps until the outbox is blocked, then waits for writability and drains it."""
        while True:
            await self._lot.park()
            while self.blocked:
                await trio.lowlevel.wait_writable(self._fd)
                self.blocked = False
                self.write_now()

    def drain_best_effort(self) -> None:
        """Write what can be written right now without waiting (used just before closing)."""
        if not self.blocked:
            self.write_now()

    def close(self) -> None:
        self.closed = True
        self._chunks.clear()
        self.nbytes = 0

    def _consume(self, sent: int) -> None:
        self.nbytes -= sent
        chunks = self._chunks
        while sent:
            head = chunks[0]
            if sent >= len(head):
                sent -= len(head)
                chunks.popleft()
            else:
                chunks[0] = memoryview(head)[sent:]
                sent = 0

    def _fail(self) -> None:
        # The peer is gone (EPIPE, ECONNRESET): the reader will see EOF and close the session.
        self.closed = True
        self._chunks.clear()
        self.nbytes = 0


def _head(chunks: deque[bytes | memoryview], n: int) -> list[bytes | memoryview]:
    if len(chunks) <= n:
        return list(chunks)
    return [chunks[i] for i in range(n)]


class Flusher:
    """The one task that writes every dirty outbox, once per scheduler tick."""

    def __init__(self) -> None:
        self._dirty: list[Outbox] = []
        self._stamps: list[float] = []
        self._lot = trio.lowlevel.ParkingLot()
        self.writes = 0
        # Told, once per stamp, how long ago the stamped pushes were made when the round writing them ends.
        self.on_written: Callable[[float], None] | None = None

    def schedule(self, outbox: Outbox) -> None:
        if not self._dirty:
            self._lot.unpark()
        self._dirty.append(outbox)

    def stamp(self, pushed_at: float) -> None:
        """Pushes were just made (a committed batch, at trio time ``pushed_at``): time them to the write.

        One stamp per batch, not per member, so timing costs nothing per delivery. Outboxes that were blocked
        are written by their own writers later and are not in the figure (they are the catch-up story).
        """
        if self._dirty and self.on_written is not None:
            self._stamps.append(pushed_at)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if not self._dirty:
                await self._lot.park()
            dirty, self._dirty = self._dirty, []
            stamps, self._stamps = self._stamps, []
            for outbox in dirty:
                outbox.write_now()
            self.writes += len(dirty)
            if stamps and self.on_written is not None:
                now = trio.current_time()
                for pushed_at in stamps:
                    self.on_written(now - pushed_at)
            # Let the tasks that produce broadcasts run before the next round, so writes batch up.
            await trio.lowlevel.checkpoint()
