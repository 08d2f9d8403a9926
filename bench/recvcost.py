"""``python -m bench receive-cost``: the load generator's CPU per delivery and per send, without a server.

A checking member's work per read (``Client.consume``: find each delivery, check its stream's order, record
its latency) is fed reads made of frames the server's own code encodes (``protocol.events.message_packet`` in
``protocol.websocket.frame``), several messages a read as a busy server writes them, from a handful of
(sender, room) streams in order, with latencies spread over 1-20 ms. Each repetition starts with a fresh
client, so every stream is seen in order once. The figure is the thread's CPU time divided by the deliveries
(the best of the repetitions: the least disturbed by other work on the machine), so it is deterministic work,
not a guess at a server's speed. The sender's side is timed the same way on ``Client.frame_for``.

One client core at 100% absorbs at most 1 / (µs per delivery) million checked deliveries per second.

``--deflate`` times a member that agreed on permessage-deflate: the same messages compressed as the server
compresses them (``protocol.deflate.Deflater``, threshold 0), each read through the member's ``FrameInflater``
before ``consume``; ``--chat-text`` makes the padding chat-like text (bench/chattext.py) instead of x's, which
deflate would shrink absurdly.
"""

from __future__ import annotations

import argparse
import random
import time

import msgspec

from bench.chattext import text
from bench.client import Client, Stats
from bench.inflate import Agreement, FrameInflater
from protocol.deflate import Deflater, DeflateStats
from protocol.events import MessageOut, message_packet
from protocol.websocket import frame

NOW_NS = 10**18  # the receiver's clock at each read; the messages were scheduled 1-20 ms before it


class Cost(msgspec.Struct, frozen=True):
    deliveries: int  # per repetition
    per_read: int
    streams: int
    receive_us: float  # CPU µs per checked delivery (the best repetition)
    send_us: float  # CPU µs per message framed for sending (the best repetition)
    deflate: bool = False  # the reads were compressed and inflated by the member

    def line(self) -> str:
        ceiling = 1 / self.receive_us if self.receive_us else float("inf")
        return (
            f"receive{' (inflating)' if self.deflate else ''}: {self.receive_us:.3f} µs/delivery"
            f" ({self.deliveries:,} deliveries, {self.per_read} a read,"
            f" {self.streams} streams; one core: at most {ceiling:,.2f} M checked deliveries/s);"
            f" send: {self.send_us:.3f} µs/message"
        )


class Content(msgspec.Struct, frozen=True):
    """How the messages ``reads`` makes look and travel."""

    chat_text: bool = False  # the padding is chat-like text (bench/chattext.py), not x's
    deflate: bool = False  # each frame compressed as the server compresses it for a member that agreed


PLAIN = Content()


def reads(
    deliveries: int, per_read: int, streams: int, padding: int, seed: int = 2026, *, content: Content = PLAIN
) -> list[bytes]:
    """What a checking member reads: ``deliveries`` server frames, ``per_read`` to a read, streams interleaved."""
    rng = random.Random(seed)
    pad = text(rng, padding) if content.chat_text else "x" * padding
    deflater = Deflater(15, 0, DeflateStats()) if content.deflate else None
    frames = []
    for i in range(deliveries):
        stream = i % streams
        sender, room, n = stream, stream // 3, i // streams
        sched = NOW_NS - rng.randrange(1_000_000, 20_000_000)
        body = f"{sched}|{sender}|{room}|{n}|{pad}"
        message = MessageOut(
            "message", f"room-{room:032d}", f"user{sender}", body, "2026-12-31T23:59:59.999Z", f"{i:024x}", i + 1
        )
        packet = message_packet(message)
        frames.append(frame(packet) if deflater is None else deflater.frame(packet))
    return [b"".join(frames[i : i + per_read]) for i in range(0, len(frames), per_read)]


def receive_us(chunks: list[bytes], deliveries: int, repeat: int, *, deflate: bool = False) -> float:
    best = float("inf")
    for _ in range(repeat):
        client = Client(None, 0, Stats())  # type: ignore[arg-type]  # never reads: fed by hand
        inflater = FrameInflater(Agreement(context_takeover=False))
        started = time.thread_time_ns()
        if deflate:
            for data in chunks:
                client.consume(inflater.feed(data), NOW_NS)
        else:
            for data in chunks:
                client.consume(data, NOW_NS)
        client.stats.tick()  # as if these were one second's: the latencies go into histograms in bulk
        spent = time.thread_time_ns() - started
        if client.stats.delivered != deliveries:
            raise AssertionError(f"parsed {client.stats.delivered} of {deliveries} deliveries")
        best = min(best, spent / 1000 / deliveries)
    return best


def send_us(messages: int, padding: int, repeat: int) -> float:
    pad = "x" * padding
    room_id = f"room-{0:032d}"
    best = float("inf")
    for _ in range(repeat):
        client = Client(None, 7, Stats())  # type: ignore[arg-type]
        started = time.thread_time_ns()
        for k in range(messages):
            client.frame_for(0, room_id, k, NOW_NS + k, pad)
        best = min(best, (time.thread_time_ns() - started) / 1000 / messages)
    return best


def measure(
    deliveries: int = 60_000,
    per_read: int = 32,
    streams: int = 6,
    padding: int = 60,
    repeat: int = 5,
    *,
    content: Content = PLAIN,
) -> Cost:
    chunks = reads(deliveries, per_read, streams, padding, content=content)
    return Cost(
        deliveries,
        per_read,
        streams,
        receive_us(chunks, deliveries, repeat, deflate=content.deflate),
        send_us(deliveries, padding, repeat),
        deflate=content.deflate,
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number >= 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--deliveries", type=_positive, default=60_000, help="deliveries per repetition (default 60,000)"
    )
    parser.add_argument("--per-read", type=_positive, default=32, help="messages in one read (default 32)")
    parser.add_argument("--streams", type=_positive, default=6, help="(sender, room) streams interleaved (default 6)")
    parser.add_argument("--padding", type=int, default=60, help="content characters after the header (default 60)")
    parser.add_argument("--repeat", type=_positive, default=5, help="repetitions; the best is reported (default 5)")
    parser.add_argument(
        "--deflate", action="store_true", help="compressed frames, inflated by the member (permessage-deflate)"
    )
    parser.add_argument("--chat-text", action="store_true", help="chat-like padding (bench/chattext.py), not x's")


def run(args: argparse.Namespace) -> int:
    content = Content(chat_text=args.chat_text, deflate=args.deflate)
    cost = measure(args.deliveries, args.per_read, args.streams, args.padding, args.repeat, content=content)
    print(cost.line())
    return 0
