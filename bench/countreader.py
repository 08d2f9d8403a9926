"""Count-only members read on one plain epoll thread instead of as trio tasks.

In a 1000-member fan-out every message wakes 1000 sockets in the load generator. As trio tasks each wake costs
a reschedule, an I/O-manager round and a task switch (py-spy: about 40 us a wake, 80% of the worker on
trio's machinery), and one broadcast then takes the client ~40 ms to drain: that was the latency the
benchmark reported, not the server's. Here one ``epoll.poll`` returns every ready socket and each costs a
``read`` and a ``bytes.count``. The checked members (order, loss, latency) stay on the trio path.

The sockets stay owned by their trio streams (closed by them after ``stop``); this thread only reads them,
answers pings, and counts message headers, including a header split across two reads, and the bytes read. A
member that agreed on permessage-deflate is added with its FrameInflater: its reads are inflated before the
count (bench/inflate.py); the others' reads cost a dict lookup and an add more than before compression existed.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable

from bench.inflate import DeflateRefused, FrameInflater
from bench.wire import PING_FRAME, PONG, pongs_for

_READ = 65536  # under glibc's mmap threshold, as in bench/client.py


class CountReader:
    def __init__(self, marker: bytes, on_count: Callable[[int], None]) -> None:
        self._marker = marker
        self._keep = max(len(marker), len(PING_FRAME)) - 1
        self._on_count = on_count
        self._epoll = select.epoll()
        self._counts: dict[int, int] = {}  # fd → deliveries counted
        self._tails: dict[int, bytes] = {}  # fd → the last len(marker)-1 bytes read
        self._inflaters: dict[int, FrameInflater] = {}  # fd → its inflater, for members that agreed on deflate
        self.wire_bytes: dict[int, int] = {}  # fd → bytes read off the socket (plain members; see wire_bytes_of)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="count-reader", daemon=True)
        self.closed: list[int] = []  # fds whose peer closed the connection (or broke permessage-deflate)
        self.errors: list[str] = []

    def add(self, fd: int, inflater: FrameInflater | None = None) -> None:
        self._counts[fd] = 0
        self._tails[fd] = b""
        self.wire_bytes[fd] = 0
        if inflater is not None:
            self._inflaters[fd] = inflater
        self._epoll.register(fd, select.EPOLLIN)

    def wire_bytes_of(self, fd: int) -> int:
        """Bytes read off ``fd``'s socket (for a member that inflates, before inflating)."""
        inflater = self._inflaters.get(fd)
        return self.wire_bytes[fd] if inflater is None else inflater.wire_bytes

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[int, int]:
        """Stop reading (within 0.1 s); deliveries counted per fd."""
        self._stop.set()
        self._thread.join()
        self._epoll.close()
        return self._counts

    def _run(self) -> None:
        marker, keep, counts, tails = self._marker, self._keep, self._counts, self._tails
        inflaters, received = self._inflaters, self.wire_bytes
        while not self._stop.is_set():
            batch = 0
            for fd, _ in self._epoll.poll(0.1):
                try:
                    data = os.read(fd, _READ)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._epoll.unregister(fd)
                    self.closed.append(fd)
                    continue
                inflater = inflaters.get(fd)
                if inflater is None:
                    received[fd] += len(data)
                else:
                    try:
                        data = inflater.feed(data)  # counts the bytes itself
                    except DeflateRefused as exc:  # the server's frames break the extension: stop reading it
                        self._epoll.unregister(fd)
                        self.closed.append(fd)
                        self.errors.append(f"fd {fd}: {exc}")
                        continue
                    if not data:
                        continue  # only part of a frame so far
                # A header split across reads: any match in tail + the first bytes must cross the boundary.
                seam = tails[fd] + data[:keep]
                found = data.count(marker) + seam.count(marker)
                tails[fd] = data[-keep:] if len(data) >= keep else (tails[fd] + data)[-keep:]  # no 64 KiB copy
                counts[fd] += found
                batch += found
                owed = pongs_for(data) or (PONG if PING_FRAME in seam else b"")
                if owed:
                    with contextlib.suppress(OSError):
                        os.write(fd, owed)
            if batch:
                self._on_count(batch)
