"""The load generator's Socket.IO client: raw websocket, cheap to send, cheap to receive, checks everything.

Each message's content starts with ``<scheduled ns>|<sender>|<room>|<n>|``. Receiving never decodes JSON: one
compiled regex finds every message's content header in a chunk (C speed), another the acks while some are owed,
and the Python work per delivery is a dict lookup, an order check and an array append (``take``; the latencies
go into HDR histograms once a second, in bulk). ``python -m bench receive-cost`` times it: 0.77 µs a delivery.
Latency is measured from the *scheduled* send time, so a client that falls behind its schedule shows up as
latency, never as a lower rate (no coordinated omission).
"""

from __future__ import annotations

import base64
import os
import re
import threading
import time
from array import array
from collections.abc import Callable

import msgspec
import trio

from bench.accounting import StreamTracker
from bench.histogram import Histogram
from bench.inflate import OFFER, FrameInflater, InflatingStream, agreement
from bench.polling import PollingStream
from bench.slowread import MemberWatch
from bench.wire import client_frame, pongs_for

_encode = msgspec.json.Encoder().encode
# The slow readers' path: a message's content header, or an ack (43<id>[...]) with enough of its payload to see "ok".
# The ack must be complete (up to its closing "]"): one split across two reads is matched on the next read.
_PATTERN = re.compile(rb'"content":"(\d+)\|(\d+)\|(\d+)\|(\d+)\||43(\d+)\[(\{[^\]]{0,300}\}|)\]')
_CONTENT = CONTENT_MARKER = b'"content":"'
# The checked path scans for these two apart: each starts with a literal the regex engine searches for at C speed.
_HEADER = re.compile(rb'"content":"(\d+)\|(\d+\|\d+)\|(\d+)\|')  # scheduled ns, "sender|room", n
_ACK = re.compile(rb"43(\d+)\[(\{[^\]]{0,300}\}|)\]")
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
        self._streams: dict[bytes, StreamTracker] = {}  # the checked path's index of trackers: b"sender|room"
        self._remote_streams: set[bytes] = set()  # a cluster: the streams sent through another process
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
        self._templates: dict[tuple[int, str], bytes] = {}  # (room, padding) → frame_for's payload, pre-encoded
        self._tail = b""
        self.offered = False  # asked for permessage-deflate in its handshake (``negotiated``: and got it)
        # Where ``take`` puts its latencies: a member that agreed on permessage-deflate keeps them apart, so that a
        # result can tell what compression adds on the server's side (both groups) from the inflating (one).
        self.recorder = stats.deliveries
        # Bytes its receive loop read (for a member behind an InflatingStream: after inflating). One add per
        # read, kept in a local of the hot loop and added here when the loop ends.
        self.read_bytes = 0

    @property
    def negotiated(self) -> bool:
        """The server agreed on permessage-deflate: reads go through a FrameInflater."""
        return isinstance(self.stream, InflatingStream)

    @property
    def wire_bytes(self) -> int:
        """Bytes received off the socket after the handshake (before inflating)."""
        return self.stream.inflater.wire_bytes if isinstance(self.stream, InflatingStream) else self.read_bytes

    @property
    def socket_stream(self) -> trio.SocketStream | None:
        """The TCP stream under this member (None: long-polling), for the count-only reader thread."""
        stream = self.stream.stream if isinstance(self.stream, InflatingStream) else self.stream
        return stream if isinstance(stream, trio.SocketStream) else None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        token: str,
        index: int,
        stats: Stats,
        *,
        check: bool = True,
        polling: bool = False,
        deflate: bool = False,
    ) -> Client:
        """One member connected (Socket.IO CONNECT answered); ``deflate``: offer permessage-deflate."""
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
            + b"\r\nSec-WebSocket-Version: 13\r\n"
            + (OFFER if deflate else b"")
            + b"\r\n"
        )
        if deflate:
            return await cls._connect_offering(stream, index, stats, check=check)
        # As real clients do: CONNECT only after the Engine.IO OPEN packet (some servers drop earlier frames).
        buffer = await _read_until(stream, b'0{"sid"', b"")
        if not buffer.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(buffer[:200].decode(errors="replace"))
        await stream.send_all(client_frame(b"40"))
        await _read_until(stream, b'40{"sid"', buffer)
        return cls(stream, index, stats, check=check)

    @classmethod
    async def _connect_offering(cls, stream: trio.SocketStream, index: int, stats: Stats, *, check: bool) -> Client:
        """The rest of a handshake that offered permessage-deflate: the answer read up to its blank line, then
        every frame through a FrameInflater if the server agreed (so none is cut in two between the handshake
        and the receive loop)."""
        buffer = await _read_until(stream, b"\r\n\r\n", b"")
        head, rest = buffer.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(buffer[:200].decode(errors="replace"))
        agreed = agreement(head)
        if agreed is None:  # declined (compression off): a plain member that offered
            buffer = await _read_until(stream, b'0{"sid"', rest)
            await stream.send_all(client_frame(b"40"))
            await _read_until(stream, b'40{"sid"', buffer)
            client = cls(stream, index, stats, check=check)
        else:
            inflating = InflatingStream(stream, FrameInflater(agreed))
            buffer = inflating.inflater.feed(rest)
            buffer = await _read_until(inflating, b'0{"sid"', buffer)
            await stream.send_all(client_frame(b"40"))
            await _read_until(inflating, b'40{"sid"', buffer)
            inflating.inflater.wire_bytes = 0  # from here on: what the run receives
            client = cls(inflating, index, stats, check=check)
            client.recorder = stats.deflate_deliveries
        client.offered = True
        return client

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
        template = self._templates.get((room, padding))
        if template is None:
            template = self._templates[(room, padding)] = _send_template(room_id, self.index, room, padding)
        payload = template % (ack, scheduled_ns, n, n)
        size = len(payload)  # client_frame's header, inlined: the sender's per-message path
        if size < 126:
            return bytes((0x81, 0x80 | size)) + b"\x00\x00\x00\x00" + payload
        return client_frame(payload)

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
        got = 0
        try:
            while True:
                data = await self.stream.receive_some(_READ)
                if not data:
                    return
                got += len(data)
                self.consume(data, time.monotonic_ns())
                await self._answer_pings(data)
        finally:
            self.read_bytes += got

    def consume(self, data: bytes | bytearray, now: int) -> None:
        """One read of the checked path, pings aside: what ``python -m bench receive-cost`` times."""
        buf = self._tail + data
        end = self.take(buf, now)
        self._tail = buf[max(end, len(buf) - _TAIL) :]

    def take(self, buf: bytes, now: int) -> int:
        """Every delivery and ack in ``buf`` (a read and the unparsed tail of the last); where parsing ended.

        The client's hot path: one scan for message headers (a pattern with a literal prefix, which the regex
        engine finds at C speed; with the ack in one alternation it scanned 3x slower), a dict lookup by the
        header's ``sender|room`` bytes, the in-order case of ``StreamTracker.see`` inlined, and the latency
        appended to an array (recorded into histograms once a second). Acks are scanned for only while some
        are owed.
        """
        record = self.recorder.pending.append  # swapped only by Stats.tick, never during this call
        streams = self._streams
        remote = self._remote_streams
        match = None
        for match in _HEADER.finditer(buf):
            sched, stream, n_text = match.groups()
            tracker = streams.get(stream)
            if tracker is None:
                tracker = self._new_stream(stream)
            n = int(n_text)
            if n == tracker.next:  # StreamTracker.see's in-order case
                tracker.next = n + 1
                tracker.delivered += 1
            else:
                tracker.see(n)
            latency = (now - int(sched)) // 1000
            record(latency)
            if remote and stream in remote:
                self.stats.cross_latency.record(latency)  # sent through another process of a cluster
        end = 0 if match is None else match.end()
        if self.pending_acks:
            for ack in _ACK.finditer(buf):
                self._on_ack(int(ack[1]), ack[2], now)
                end = max(end, ack.end())
        return end

    def _new_stream(self, stream: bytes) -> StreamTracker:
        sender, room = (int(part) for part in stream.split(b"|"))
        tracker = self._streams[stream] = self.trackers.setdefault((sender, room), StreamTracker())
        if sender in self.stats.remote_senders:
            self._remote_streams.add(stream)
        return tracker

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
            self.read_bytes += len(data)
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
            self.read_bytes += len(data)
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
            self.read_bytes += len(data)
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


def _send_template(room_id: str, index: int, room: int, padding: str) -> bytes:
    """A ``send_message`` event with ack id, scheduled time and n left as ``%d``: the rest is encoded once.

    ``frame_for`` fills it with bytes formatting, which makes the same bytes as encoding the event each time
    (tests/test_bench_receive_cost.py holds them equal).
    """
    head = _encode(["send_message", {"roomId": room_id, "content": ""}])[:-3]  # up to the content's opening quote
    pad = _encode(padding)[1:-1]  # JSON-escaped, without its quotes
    return (
        b"42%d"
        + head.replace(b"%", b"%%")
        + b"%d|"
        + str(index).encode()
        + b"|"
        + str(room).encode()
        + b"|%d|"
        + pad.replace(b"%", b"%%")
        + b'","clientMsgId":"'
        + f"{index}-{room}-".encode()
        + b'%d"}]'
    )


async def _read_until(stream: trio.abc.ReceiveStream, marker: bytes, buffer: bytes) -> bytes:
    while marker not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError(f"closed during the handshake: {buffer[:200]!r}")
        buffer += chunk
    return buffer


class Recorder:
    """Latencies (µs) as they come, one C-level append each, recorded into histograms once a second.

    Recording every value into an HdrHistogram as it arrived took two thirds of a checking member's CPU per
    delivery (hdrh's ``record_value`` is Python); ``Histogram.of`` records a second's values in bulk.
    """

    __slots__ = ("pending", "recorded", "total")

    def __init__(self) -> None:
        self.pending = array("q")  # this second's values, not yet in ``total``
        self.total = Histogram()
        self.recorded = 0

    def __len__(self) -> int:
        return self.recorded + len(self.pending)

    def close_second(self) -> Histogram:
        """The values since the last call, as a histogram; also added to ``total``."""
        values, self.pending = self.pending, array("q")
        second = Histogram.of(values)
        self.total.add(second)
        self.recorded += len(values)
        return second

    def histogram(self) -> Histogram:
        """Every value so far."""
        self.close_second()
        return self.total


class Stats:
    """A worker's counters and histograms, with a per-second timeline."""

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.deliveries = Recorder()  # checked deliveries at full speed: their latency
        self.deflate_deliveries = Recorder()  # ... of the members that agreed on permessage-deflate
        self.acks = Recorder()
        # A cluster: the senders whose messages went through another process than this worker's members,
        # and those deliveries' latency (the NOTIFY hop and the read), also counted in the delivery latency.
        self.remote_senders: frozenset[int] = frozenset()
        self.cross_latency = Histogram()
        self.sent = 0
        self.acked = 0
        self._slow_delivered = 0  # the slow readers' checked deliveries
        self._counted = 0  # count-only deliveries (the count-only reader thread, under _lock)
        self._second_counted = 0
        self._lock = threading.Lock()
        self.recovered = 0  # messages a churner got from history catch-up rather than live
        self.history_reads = 0
        self.history_latency = Histogram()
        self.rejoins = 0
        self.reconnects = 0
        self.second: list[int] = [0, 0, 0]  # sent, acked, slow readers' deliveries in the current second
        self.last_second = Histogram()  # the delivery latency of the last second the timeline closed
        self.timeline: list[tuple[int, int, int, str]] = []  # per second: sent, acked, delivered, histogram
        # Slow readers' deliveries (slow-readers scenario): counted as deliveries, their latency kept apart so
        # that the delivery latency stays the full-speed members' (the ones that must not notice).
        self.slow_latency = Histogram()
        self.second_slow_latency = Histogram()
        self.slow_timeline: list[str] = []  # per second: the slow readers' latency histogram

    @property
    def delivered(self) -> int:
        return len(self.deliveries) + len(self.deflate_deliveries) + self._slow_delivered + self._counted

    def delivery_latency(self) -> Histogram:
        """Every checked delivery at full speed, the members that inflate included."""
        both = Histogram()
        both.add(self.deliveries.histogram())
        both.add(self.deflate_deliveries.histogram())
        return both

    def ack_latency(self) -> Histogram:
        return self.acks.histogram()

    def delivery(self, latency_us: int) -> None:
        """One checked delivery (the hot path appends to ``deliveries.pending`` itself)."""
        self.deliveries.pending.append(latency_us)

    def slow_delivery(self, latency_us: int) -> None:
        self._slow_delivered += 1
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
        self.acks.pending.append(latency_us)

    def sent_messages(self, count: int) -> None:
        self.sent += count
        self.second[0] += count

    def tick(self) -> tuple[int, int, int]:
        """Close the current second of the timeline; its sent, acked and delivered counts."""
        with self._lock:
            counted, self._second_counted = self._second_counted, 0
        sent, acked, slow = self.second
        self.last_second = second = Histogram()
        second.add(self.deliveries.close_second())
        second.add(self.deflate_deliveries.close_second())
        self.acks.close_second()
        delivered = second.count + slow + counted
        self.timeline.append((sent, acked, delivered, second.encode()))
        self.second = [0, 0, 0]
        self.slow_timeline.append(self.second_slow_latency.encode())
        self.second_slow_latency = Histogram()
        return sent, acked, delivered
