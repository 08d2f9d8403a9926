"""The eventual result of a job handed to a storage engine's writer (a thread, or a task on a connection)."""

from __future__ import annotations

from typing import Generic, TypeVar

import outcome
import trio

T = TypeVar("T")


class Pending(Generic[T]):
    """The eventual result of one submitted job."""

    __slots__ = ("_done", "_outcome")

    def __init__(self) -> None:
        self._done = trio.Event()
        self._outcome: outcome.Outcome[T] | None = None

    def _finish(self, result: outcome.Outcome[T]) -> None:
        self._outcome = result
        self._done.set()

    async def wait(self) -> T:
        """Wait for the job. Cancelling the wait does not cancel the job: it has been submitted."""
        await self._done.wait()
        assert self._outcome is not None
        return self._outcome.unwrap()
