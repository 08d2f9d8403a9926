"""The load generator's Socket.IO client: raw websocket, cheap to send, cheap to receive, checks everything.

Each message's content starts with ``<scheduled ns>|<sender>|<room>|<n>|``. Receiving never decodes JSON: one
compiled regex finds every message's content header and every ack in a chunk (C speed), and the Python work
per delivery is a tracker update and a histogram record. Latency is measured from the *scheduled* send time,
so a client that falls behind its schedule shows up as latency, never as a lower rate (no coordinated omission).
"""

from __future__ import annotations

import base64
import os
import re
import threading
import time
from collections.abc import Callable

import msgspec
import trio

from bench.accounting import StreamTracker
from bench.histogram import Histogram
from bench.polling import PollingStream
from bench.slowread import MemberWatch
from bench.wsclient import client_frame, pongs_for

_encode = msgspec.json.Encoder().encode
# A message's content header, or an ack (43<id>[...]) with enough of its payload to see "ok".
# The ack must be complete (up to its closing "]"): one split across two reads is matched on the next read.
_PATTERN = re.compile(rb'"content":"(\d+)\|(\d+)\|(\d+)\|(\d+)\||43(\d+)\[(\{[^\]]{0,300}\}|)\]')
_CONTENT = CONTENT_MARKER = b'"content":"'
# Churners also need each message's seq (our server's payload and history rows both put it after id).
_WITH_SEQ = re.compile(rb'"content":"(\d+)\|(\d+)\|(\d+)\|(\d+)\|[^"]*","timestamp":"[^"]*","id":"[^"]*","seq":(\d+)')

# 64 KiB per read: under glibc's mmap threshold (128 KiB), so each read's buffer comes from the heap; a 1 MiB
# read costs an mmap, page faults and an munmap per call, which was the load generator's biggest cost.
_READ = 65536
_TAIL = 512  # longest partial header or ack we may need to re-scan with the next chunk


class Client:
    """One connected user. Senders call ``send``; ``receive_loop`` runs for the whole run."""

    def __init__(self, stream: trio.abc.Stream, index: int, stats: Stats, *, check: bool = True) -> None:
        self.stream = stream
        self.index = index
        self.stats = stats
        self.check = check  # False: only count deliveries (members beyond the checked sample of a big room)
        self.counted = 0
        self.seqs: dict[int, set[int]] | None = None  # churners: seqs seen per room, live or from history
        self.watch: MemberWatch | None = None  # slow readers: the pace and what they observe
        self.closed_at: float | None = None  # time.monotonic() when the server closed or reset the connection
        self.trackers: dict[tuple[int, int], StreamTracker] = {}  # (sender, room) → what this member saw
        self.pending_acks: dict[int, tuple[int, int]] = {}  # ack id → (room, scheduled ns)
        self.accepted: dict[int, int] = {}  # room → messages of ours the server accepted
        self.written: dict[int, int] = {}  # room → messages of ours framed for sending, acked or not
        self.rejected = 0
        self._next_ack = 0
        # The sender, the receive loop's pongs and a churner's events share the stream: one send at a time
        # (trio refuses concurrent send_all on one stream; a pong during a blocked send once broke a run).
        # The receive loop never waits for the lock: a sender blocked by a server that is not reading could
        # be waiting for us to read. A pong owed while a send is in progress goes out right after it.
        self._send_lock = trio.Lock()
        self._owed = b""  # pongs due while a send held the lock
        self._tail = b""

    @classmethod
    async def connect(
        cls, host: str, port: int, token: str, index: int, stats: Stats, *, check: bool = True, polling: bool = False
    ) -> Client:
        if polling:
            return cls(await PollingStream.connect(host, port, token), index, stats, check=check)
        stream = await trio.open_tcp_stream(host, port)
        key = base64.b64encode(os.urandom(16))
        await stream.send_all(
            b"GET /socket.io/?EIO=4&transport=websocket&token="
            + token.encode()
            + b" HTTP/1.1\r\nHost: "
            + host.encode()
            + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
            + key
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        # As real clients do: CONNECT only after the Engine.IO OPEN packet (some servers drop earlier frames).
        buffer = await _read_until(stream, b'0{"sid"', b"")
        if not buffer.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(buffer[:200].decode(errors="replace"))
        await stream.send_all(client_frame(b"40"))
        await _read_until(stream, b'40{"sid"', buffer)
        return cls(stream, index, stats, check=check)

    async def send(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)
            if self._owed:
                owed, self._owed = self._owed, b""
                await self.stream.send_all(owed)

    async def _answer_pings(self, data: bytes | bytearray) -> None:
        """Pong the Engine.IO and websocket pings in a chunk, at once or right after a send in progress."""
        owed = pongs_for(data)
        if not owed:
            return
        if self._send_lock.locked():
            self._owed += owed
        else:
            await self.send(owed)

    def frame_for(self, room: int, room_id: str, n: int, scheduled_ns: int, padding: str) -> bytes:
        ack = self._next_ack
        self._next_ack += 1
        self.pending_acks[ack] = (room, scheduled_ns)
        self.written[room] = self.written.get(room, 0) + 1
        content = f"{scheduled_ns}|{self.index}|{room}|{n}|{padding}"
        payload = {"roomId": room_id, "content": content, "clientMsgId": f"{self.index}-{room}-{n}"}
        return client_frame(b"42" + str(ack).encode() + _encode(["send_message", payload]))

    async def receive_loop(self) -> None:
        if not self.check:
            await self._count_loop()
            return
        if self.seqs is not None:
            await self._seq_loop()
            return
        if self.watch is not None:
            await self._watched_loop(self.watch)
            return
        stats = self.stats
        remote = stats.remote_senders
        while True:
            data = await self.stream.receive_some(_READ)
            if not data:
                return
            now = time.monotonic_ns()
            buf = self._tail + data
            end = 0
            for match in _PATTERN.finditer(buf):
                end = match.end()
                sched, sender, room, n, ack, body = match.groups()
                if sched is not None:
                    key = (int(sender), int(room))
                    tracker = self.trackers.get(key)
                    if tracker is None:
                        tracker = self.trackers[key] = StreamTracker()
                    tracker.see(int(n))
                    latency = (now - int(sched)) // 1000
                    stats.delivery(latency)
                    if remote and int(sender) in remote:
                        stats.cross_latency.record(latency)  # sent through another process of a cluster
                else:
                    self._on_ack(int(ack), body, now)
            self._tail = buf[max(end, len(buf) - _TAIL) :]
            await self._answer_pings(data)

    async def _watched_loop(self, watch: MemberWatch) -> None:
        """A slow reader's path: the checked path, paced by ``watch``, its latencies kept apart from the rest.

        A copy of ``receive_loop``'s body rather than a hook in it: that loop is the client's hot path.
        """
        stats = self.stats
        slow_end = watch.slow_end_ns
        while True:
            data = await self.stream.receive_some(watch.read_size())
            if not data:
                return
            now = time.monotonic_ns()
            buf = self._tail + data
            end = messages = worst = 0
            for match in _PATTERN.finditer(buf):
                end = match.end()
                sched, sender, room, n, ack, body = match.groups()
                if sched is not None:
                    key = (int(sender), int(room))
                    tracker = self.trackers.get(key)
                    if tracker is None:
                        tracker = self.trackers[key] = StreamTracker()
                    tracker.see(int(n))
                    scheduled = int(sched)
                    latency = (now - scheduled) // 1000
                    stats.slow_delivery(latency)
                    worst = max(worst, latency)
                    messages += 1
                    if scheduled < slow_end:
                        watch.last_old_ns = now
                else:
                    self._on_ack(int(ack), body, now)
            self._tail = buf[max(end, len(buf) - _TAIL) :]
            await self._answer_pings(data)
            watch.observe(now, len(data), worst)
            await watch.pace(messages)

    async def _seq_loop(self) -> None:
        """The churner's path: like the checked path, but each message is taken once by its seq, live or not."""
        tail = b""
        while True:
            data = await self.stream.receive_some(_READ)
            if not data:
                return
            buf = tail + data
            end = self.absorb(buf, live=True)
            tail = buf[max(end, len(buf) - _TAIL) :]
            await self._answer_pings(data)

    def last_seq(self, room: int) -> int:
        """The newest seq this churner has of ``room`` (0 if none): where a catch-up starts."""
        assert self.seqs is not None
        return max(self.seqs.get(room) or (0,))

    def absorb(self, data: bytes, *, live: bool) -> int:
        """Feed messages (a websocket chunk or a history page) into the trackers; returns where parsing ended."""
        assert self.seqs is not None
        now = time.monotonic_ns()
        end = 0
        for match in _WITH_SEQ.finditer(data):
            end = match.end()
            sched, sender, room, n, seq = (int(g) for g in match.groups())
            seen = self.seqs.setdefault(room, set())
            if seq in seen:
                continue
            seen.add(seq)
            key = (sender, room)
            tracker = self.trackers.get(key)
            if tracker is None:
                tracker = self.trackers[key] = StreamTracker()
            tracker.see(n)
            if live:
                self.stats.delivery((now - sched) // 1000)
            else:
                self.stats.recovered += 1
        return end

    async def _count_loop(self) -> None:
        """The cheap path: count message headers in the byte stream (C speed), answer pings, nothing else."""
        tail = b""
        keep = len(_CONTENT) - 1
        while True:
            data = await self.stream.receive_some(_READ)
            if not data:
                return
            buf = tail + data
            found = buf.count(_CONTENT)
            self.counted += found
            self.stats.counted(found)
            tail = buf[-keep:]
            await self._answer_pings(data)

    def _on_ack(self, ack_id: int, body: bytes, now: int) -> None:
        pending = self.pending_acks.pop(ack_id, None)
        if pending is None:
            return
        room, sched = pending
        if b'"ok":true' in body or body == b"":  # "": a bare ack (43<id>[]) from a peer without payloads
            self.accepted[room] = self.accepted.get(room, 0) + 1
            self.stats.ack((now - sched) // 1000)
        else:
            self.rejected += 1


async def _read_until(stream: trio.SocketStream, marker: bytes, buffer: bytes) -> bytes:
    while marker not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError(f"closed during the handshake: {buffer[:200]!r}")
        buffer += chunk
    return buffer


class Stats:
    """A worker's counters and histograms, with a per-second timeline."""

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.delivery_latency = Histogram()
        self.ack_latency = Histogram()
        # A cluster: the senders whose messages went through another process than this worker's members,
        # and those deliveries' latency (the NOTIFY hop and the read), also counted in delivery_latency.
        self.remote_senders: frozenset[int] = frozenset()
        self.cross_latency = Histogram()
        self.sent = 0
        self.acked = 0
        self._delivered = 0  # checked deliveries (this loop's thread only)
        self._counted = 0  # count-only deliveries (the count-only reader thread, under _lock)
        self._second_counted = 0
        self._lock = threading.Lock()
        self.recovered = 0  # messages a churner got from history catch-up rather than live
        self.history_reads = 0
        self.history_latency = Histogram()
        self.rejoins = 0
        self.reconnects = 0
        self.second: list[int] = [0, 0, 0]  # sent, acked, delivered in the current second
        self.second_latency = Histogram()
        self.timeline: list[tuple[int, int, int, str]] = []  # per second: sent, acked, delivered, histogram
        # Slow readers' deliveries (slow-readers scenario): counted as deliveries, their latency kept apart so
        # that delivery_latency stays the full-speed members' (the ones that must not notice).
        self.slow_latency = Histogram()
        self.second_slow_latency = Histogram()
        self.slow_timeline: list[str] = []  # per second: the slow readers' latency histogram

    @property
    def delivered(self) -> int:
        return self._delivered + self._counted

    def delivery(self, latency_us: int) -> None:
        self._delivered += 1
        self.second[2] += 1
        self.delivery_latency.record(latency_us)
        self.second_latency.record(latency_us)

    def slow_delivery(self, latency_us: int) -> None:
        self._delivered += 1
        self.second[2] += 1
        self.slow_latency.record(latency_us)
        self.second_slow_latency.record(latency_us)

    def counted(self, n: int) -> None:
        """Deliveries counted without checking; called from the count-only reader thread too."""
        with self._lock:
            self._counted += n
            self._second_counted += n

    def ack(self, latency_us: int) -> None:
        self.acked += 1
        self.second[1] += 1
        self.ack_latency.record(latency_us)

    def sent_messages(self, count: int) -> None:
        self.sent += count
        self.second[0] += count

    def tick(self) -> tuple[int, int, int]:
        """Close the current second of the timeline; its sent, acked and delivered counts."""
        with self._lock:
            counted, self._second_counted = self._second_counted, 0
        sent, acked, delivered = self.second
        self.timeline.append((sent, acked, delivered + counted, self.second_latency.encode()))
        self.second = [0, 0, 0]
        self.second_latency = Histogram()
        self.slow_timeline.append(self.second_slow_latency.encode())
        self.second_slow_latency = Histogram()
        return sent, acked, delivered + counted
