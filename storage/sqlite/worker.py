"""One dedicated OS thread that runs blocking calls in submission order.

Why one thread and not ``trio.to_thread.run_sync`` per call: an SQLite connection must not be used from
two threads at once, and writes must reach the database in the order the event loop issued them (the
room registry relies on that: it changes memory, then submits the write, with no await in between).
A single thread pulling from a FIFO gives both for free.

Theory of operation: ``submit`` puts a job on a thread-safe FIFO *synchronously* (so submission order is
call order, even across tasks) and returns an awaitable. The thread runs jobs one by one and hands each
outcome back to the Trio loop with ``TrioToken.run_sync_soon``, which never blocks the thread. The thread
itself is started with ``trio.to_thread.run_sync`` from ``run``, so its lifetime is bounded by the
nursery that runs the owning engine.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

from storage.errors import StorageClosedError
from storage.pending import Pending

T = TypeVar("T")

_STOP = object()


class WorkerThread:
    """Runs submitted callables one at a time, in order, on one thread that ``run`` owns."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._accepting = False

    def submit(self, fn: Callable[..., T], *args: Any) -> Pending[T]:
        """Queue ``fn(*args)`` now; await ``.wait()`` on the result for its value or exception."""
        if not self._accepting or self._token is None:
            raise StorageClosedError(f"{self._name} is not running; start the storage engine first")
        pending: Pending[T] = Pending()
        self._jobs.put((fn, args, pending, self._token))
        return pending

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.submit(fn, *args).wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the thread and run jobs until ``stop``; returns when the thread has finished its queue.

        Cancellation does not stop it: the owner decides when the last job has been queued (the storage
        engine queues its final flush and close, then calls ``stop``). Shielded for that reason.
        """
        self._token = trio.lowlevel.current_trio_token()
        self._accepting = True
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_thread)
                task_status.started()

    def stop(self) -> None:
        """Refuse new jobs; the thread exits after running every job queued before this call."""
        if self._accepting:
            self._accepting = False
            self._jobs.put(_STOP)

    async def _run_thread(self) -> None:
        # abandon_on_cancel=False: the thread holds the database; we wait for it to finish its queue.
        await trio.to_thread.run_sync(self._thread_main, thread_name=self._name, abandon_on_cancel=False)

    def _thread_main(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            fn, args, pending, token = job
            result = outcome.capture(fn, *args)
            with contextlib.suppress(trio.RunFinishedError):  # the loop is gone; nobody waits any more
                token.run_sync_soon(pending._finish, result)
