"""The count-only reader thread: counts every header (also split across reads), answers pings, sees closes."""

from __future__ import annotations

import socket
import threading
import time

from bench.client import CONTENT_MARKER
from bench.countreader import CountReader
from bench.wire import PING_FRAME, PONG


def _wait(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def test_counts_headers_split_anywhere_answers_pings_and_sees_closes() -> None:
    totals: list[int] = []
    lock = threading.Lock()

    def on_count(n: int) -> None:
        with lock:
            totals.append(n)

    reader = CountReader(CONTENT_MARKER, on_count)
    pairs = [socket.socketpair() for _ in range(3)]
    for ours, _ in pairs:
        ours.setblocking(False)
        reader.add(ours.fileno())
    reader.start()
    message = b"\x81\x30" + b'42["message",{"content":"1|2|3|4|x"}]'
    stream = message * 50
    server0, server1, server2 = (theirs for _, theirs in pairs)
    for i in range(0, len(stream), 7):  # every split point, headers cut in two many times over
        server0.sendall(stream[i : i + 7])
        time.sleep(0.0005)
    cut = 2 * len(message)  # a ping split across two reads, between two messages
    server1.sendall(stream[:cut] + PING_FRAME[:2])
    time.sleep(0.05)
    server1.sendall(PING_FRAME[2:] + stream[cut:])
    server2.sendall(message * 3)
    server2.close()
    _wait(lambda: sum(totals) == 103)
    server1.settimeout(5)
    assert server1.recv(100) == PONG
    counts = reader.stop()
    fds = [ours.fileno() for ours, _ in pairs]
    assert [counts[fd] for fd in fds] == [50, 50, 3]
    assert sum(totals) == 103
    assert reader.closed == [fds[2]]
    for ours, theirs in pairs:
        ours.close()
        theirs.close()
