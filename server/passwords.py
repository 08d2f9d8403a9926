"""bcrypt hashing, always off the event loop, with the original's costs and 72-byte truncation.

bcrypt costs ~50-80 ms at cost 10: run on the loop it would freeze every other client for that long.
pyca/bcrypt releases the GIL while hashing, so ``hash_threads`` threads hash in parallel on that many cores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import bcrypt
import trio

T = TypeVar("T")
A = TypeVar("A")
R = TypeVar("R")

# bcryptjs (the original) silently uses only the first 72 UTF-8 bytes; pyca/bcrypt >= 5 raises instead.
BCRYPT_MAX_BYTES = 72


def _secret(password: str) -> bytes:
    return password.encode("utf-8")[:BCRYPT_MAX_BYTES]


def _hash_all(passwords: Sequence[str], salt: bytes) -> list[str]:
    return [bcrypt.hashpw(_secret(p), salt).decode("ascii") for p in passwords]


def _check(password: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(_secret(password), hashed.encode("ascii"))
    except ValueError:  # not a bcrypt hash (e.g. the original's FAST_HASH sha256 rows): no match
        return False


class PasswordHasher:
    def __init__(self, *, rounds: int, batch_rounds: int, threads: int) -> None:
        self.rounds = rounds
        self.batch_rounds = batch_rounds
        self._limiter = trio.CapacityLimiter(threads)
        self._threads = threads

    async def hash(self, password: str) -> str:
        salt = bcrypt.gensalt(self.rounds)
        return (await trio.to_thread.run_sync(_hash_all, [password], salt, limiter=self._limiter))[0]

    async def hash_batch(self, passwords: Sequence[str]) -> list[str]:
        """Hash many with one shared salt at the batch cost (as the original), spread over the threads."""
        salt = bcrypt.gensalt(self.batch_rounds)
        return await self._parallel(_hash_all, passwords, salt)

    async def check(self, password: str, hashed: str) -> bool:
        return await trio.to_thread.run_sync(_check, password, hashed, limiter=self._limiter)

    async def check_batch(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        def check_all(chunk: Sequence[tuple[str, str]], _: None) -> list[bool]:
            return [_check(p, h) for p, h in chunk]

        return await self._parallel(check_all, pairs, None)

    async def _parallel(self, fn: Callable[[Sequence[T], A], list[R]], items: Sequence[T], arg: A) -> list[R]:
        size = max(1, -(-len(items) // self._threads))  # ceil: one chunk per thread
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        results: list[list[R]] = [[] for _ in chunks]

        async def run_chunk(index: int) -> None:
            results[index] = await trio.to_thread.run_sync(fn, chunks[index], arg, limiter=self._limiter)

        async with trio.open_nursery() as nursery:
            for index in range(len(chunks)):
                nursery.start_soon(run_chunk, index)
        return [r for chunk in results for r in chunk]
