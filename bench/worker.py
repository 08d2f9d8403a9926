"""A load-generator worker: one process, one trio loop, many clients. Started by the runner, one per core.

Protocol with the runner (multiprocessing queues): connect every client, put ``("ready", worker)``, wait for
the shared start time, send on schedule for ``duration`` seconds, keep receiving for ``drain`` seconds, then
put ``("report", WorkerReport)``. Any failure is reported as ``("error", text)`` instead of hanging the run.
"""

from __future__ import annotations

import functools
import math
import os
import time
import traceback
from typing import Any

import httpx
import msgspec
import trio

from bench.accounting import StreamSummary
from bench.chattext import texts
from bench.client import CONTENT_MARKER, Client, Stats
from bench.countreader import CountReader
from bench.inflate import InflatingStream
from bench.scenarios import Text, stream_length
from bench.slowread import MemberWatch, SlowReadStats
from bench.wire import client_frame


class MemberPlan(msgspec.Struct, frozen=True, array_like=True):
    index: int
    token: str
    sends: list[tuple[int, float]]  # (room index, messages per second)
    stalled: bool = False  # connects, then never reads again (the slow-consumer scenario)
    check: bool = True  # False: count deliveries only (see runner.CHECKED_PER_ROOM)
    churn_rooms: list[int] = []  # mixed scenario: this member reads history, rejoins and reconnects in these
    polling: bool = False  # Engine.IO long-polling instead of websocket
    read_fraction: float = 1.0  # slow-readers scenario: below 1, read this share of delivery_rate while slow
    delivery_rate: float = 0.0  # messages/s this member's rooms produce
    deflate: bool = False  # offer permessage-deflate in the websocket handshake


class WorkerPlan(msgspec.Struct, frozen=True):
    worker: int
    host: str
    port: int
    room_ids: list[str]
    members: list[MemberPlan]
    duration: float
    drain: float
    padding: int
    cpus: list[int] = []
    churn_every: float = 3.0  # mixed scenario: seconds between a churner's actions
    slow_for: float = 0.0  # slow-readers scenario: seconds from the start during which slow members read slowly
    remote_senders: list[int] = []  # a cluster: users whose sends go through another process than this worker's
    text: Text | None = None  # chat-like text instead of ``padding`` x's (bench/chattext.py)


class MemberWire(msgspec.Struct, frozen=True, array_like=True):
    """What one websocket member received after its handshake, before and after inflating."""

    member: int
    offered: bool  # asked for permessage-deflate
    negotiated: bool  # ... and the server agreed
    wire_bytes: int  # off the socket
    inflated: int  # compressed messages it inflated


class WorkerReport(msgspec.Struct, frozen=True):
    worker: int
    connected: int
    sent: int
    acked: int
    rejected: int
    delivered: int
    accepted: list[tuple[int, int, int]]  # (sender, room, count)
    seen: list[tuple[int, int, int, StreamSummary]]  # (member, sender, room, summary)
    counted: list[tuple[int, int]]  # (member, deliveries) for count-only members
    delivery_hist: str
    ack_hist: str
    timeline: list[tuple[int, int, int, str]]
    cpu_seconds: float  # over the load window (NaN if the worker did not last it)
    wall_seconds: float  # the load window
    errors: list[str]
    churn: dict[str, int] = {}
    history_hist: str = ""
    written: list[tuple[int, int, int]] = []  # (sender, room, count): messages framed, acked or not
    # (member, seconds since the start) each time the server closed or reset a member's connection; NaN: a
    # count-only member (its reader thread does not time it). Nobody reconnects, except the mixed scenario's churners.
    disconnects: list[tuple[int, float]] = []
    cross_hist: str = ""  # a cluster: deliveries of messages sent through another process
    slow: list[SlowReadStats] = []  # slow-readers scenario: what each slow member observed
    slow_hist: str = ""  # the slow members' delivery latency
    slow_timeline: list[str] = []  # ... per second
    wire: list[MemberWire] = []  # websocket members' bytes received (long-polling members are left out)
    # When a member agreed on permessage-deflate: the checked deliveries' latency, those members' and the others'
    # apart (delivery_hist has both).
    deflate_hist: str = ""
    plain_hist: str = ""


def main(plan_bytes: bytes, queue: Any, start_event: Any, start_at: Any) -> None:
    """Process entry point (spawned): decode the plan, run, report."""
    plan = msgspec.msgpack.decode(plan_bytes, type=WorkerPlan)
    if plan.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, plan.cpus)
    try:
        report = trio.run(_run, plan, queue, start_event, start_at)
        queue.put(("report", msgspec.msgpack.encode(report)))
    except BaseException:
        queue.put(("error", f"worker {plan.worker}: {traceback.format_exc()}"))


async def _run(plan: WorkerPlan, queue: Any, start_event: Any, start_at: Any) -> WorkerReport:
    stats = Stats()
    stats.remote_senders = frozenset(plan.remote_senders)
    clients = await _connect_all(plan, stats)
    paddings = {m.index: _paddings(plan, m.index) for m in plan.members if m.sends}  # before the clock starts
    queue.put(("ready", plan.worker))
    await trio.to_thread.run_sync(start_event.wait)
    begin = start_at.value
    load_cpu: list[float] = []  # process CPU seconds at the start and at the end of the load
    errors: list[str] = []
    reader = CountReader(CONTENT_MARKER, stats.counted)
    counted_by_fd: dict[int, Client] = {}
    for client, member in zip(clients, plan.members, strict=True):
        if member.read_fraction < 1.0:
            allowed = member.read_fraction * member.delivery_rate
            client.watch = MemberWatch(
                member.index, begin_ns=int(begin * 1e9), slow_for=plan.slow_for, allowed_rate=allowed
            )
    async with trio.open_nursery() as nursery:
        for client, member in zip(clients, plan.members, strict=True):
            if member.churn_rooms:
                nursery.start_soon(_churn, client, member, plan, begin, errors)
            elif member.stalled:
                pass
            elif not client.check and (raw := client.socket_stream) is not None:
                counted_by_fd[raw.socket.fileno()] = client
                inflating = client.stream if isinstance(client.stream, InflatingStream) else None
                reader.add(raw.socket.fileno(), inflating.inflater if inflating else None)
            else:
                nursery.start_soon(_receive, client, errors)
        reader.start()
        nursery.start_soon(_ticker, stats, begin, queue, plan.worker)
        nursery.start_soon(_measure_cpu, load_cpu, begin, plan.duration)
        async with trio.open_nursery() as senders:
            for client, member in zip(clients, plan.members, strict=True):
                if member.sends:
                    send = functools.partial(_send_on_schedule, paddings=paddings[member.index])
                    senders.start_soon(send, client, member, plan, begin, errors)
        await trio.sleep_until(_trio_time(begin + plan.duration + plan.drain))
        nursery.cancel_scope.cancel()
    wire_by_member: dict[int, int] = {}  # count-only members: bytes their reader thread read
    for fd, count in (await trio.to_thread.run_sync(reader.stop)).items():
        counted_by_fd[fd].counted = count
        wire_by_member[counted_by_fd[fd].index] = reader.wire_bytes_of(fd)
    errors += reader.errors
    errors += [f"client {counted_by_fd[fd].index}: connection lost (closed by the server)" for fd in reader.closed]
    disconnects = [(c.index, c.closed_at - begin) for c in clients if c.closed_at is not None]
    disconnects += [(counted_by_fd[fd].index, float("nan")) for fd in reader.closed]
    for client in clients:
        await client.stream.aclose()
    cpu = load_cpu[1] - load_cpu[0] if len(load_cpu) == 2 else float("nan")
    report = _report(plan, clients, stats, cpu=cpu, wall=plan.duration, errors=errors)
    return msgspec.structs.replace(
        report,
        disconnects=disconnects,
        slow=[c.watch.stats() for c in clients if c.watch is not None],
        slow_hist=stats.slow_latency.encode(),
        slow_timeline=stats.slow_timeline,
        cross_hist=stats.cross_latency.encode() if stats.remote_senders else "",
        wire=[_wire(c, wire_by_member) for c in clients if c.socket_stream is not None],
        **_latency_by_group(clients, stats),
    )


def _latency_by_group(clients: list[Client], stats: Stats) -> dict[str, str]:
    """The deflate members' and the plain members' delivery latency, when some member agreed on deflate."""
    if not any(c.negotiated for c in clients):
        return {}
    return {
        "deflate_hist": stats.deflate_deliveries.histogram().encode(),
        "plain_hist": stats.deliveries.histogram().encode(),
    }


def _wire(client: Client, count_only: dict[int, int]) -> MemberWire:
    stream = client.stream
    inflated = stream.inflater.inflated if isinstance(stream, InflatingStream) else 0
    wire = count_only.get(client.index, client.wire_bytes)
    return MemberWire(client.index, client.offered, client.negotiated, wire, inflated)


async def _measure_cpu(into: list[float], begin: float, duration: float) -> None:
    """CPU over the load alone: the connect phase and the drain after it would dilute a saturated core."""
    await trio.sleep_until(_trio_time(begin))
    into.append(time.process_time())
    await trio.sleep_until(_trio_time(begin + duration))
    into.append(time.process_time())


async def _connect_all(plan: WorkerPlan, stats: Stats) -> list[Client]:
    clients: list[Client | None] = [None] * len(plan.members)
    limiter = trio.CapacityLimiter(32)

    async def connect(i: int) -> None:
        async with limiter:
            member = plan.members[i]
            clients[i] = await Client.connect(
                plan.host,
                plan.port,
                member.token,
                member.index,
                stats,
                check=member.check,
                polling=member.polling,
                deflate=member.deflate,
            )

    async with trio.open_nursery() as nursery:
        for i in range(len(plan.members)):
            nursery.start_soon(connect, i)
    return [c for c in clients if c is not None]


async def _receive(client: Client, errors: list[str]) -> None:
    """Receive until the run ends; a connection the server closes or resets is recorded, never reopened."""
    try:
        await client.receive_loop()
    except trio.BrokenResourceError as exc:
        client.closed_at = time.monotonic()
        errors.append(f"client {client.index}: connection lost ({exc!r})")
    except trio.ClosedResourceError as exc:  # closed on our side (a churner reconnecting): not a disconnect
        errors.append(f"client {client.index}: connection lost ({exc!r})")
    else:
        client.closed_at = time.monotonic()
        errors.append(f"client {client.index}: connection closed by the server")


async def _churn(client: Client, member: MemberPlan, plan: WorkerPlan, begin: float, errors: list[str]) -> None:
    """Mixed scenario: in turn, read history, leave and rejoin a room, reconnect; then catch up by after_seq.

    Whatever the churner missed live (while left or disconnected) must come back through history: its trackers
    are fed from both, each message once by seq, so a gap at the end is a message lost to catch-up. Catch-up
    starts from the last seq seen *before* leaving or disconnecting (live messages that arrive after the rejoin
    are past the gap). Actions stop a second before the load does, so none is cut off half-way by the end.
    """
    client.seqs = {}
    base = f"http://{plan.host}:{plan.port}"
    headers = {"Authorization": f"Bearer {member.token}"}
    last_action_at = begin + plan.duration - 1
    step = 0
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
        while True:
            async with trio.open_nursery() as connection:
                connection.start_soon(_receive, client, errors)
                while True:
                    at = begin + (step + 1) * plan.churn_every
                    if at > last_action_at:
                        await trio.sleep_forever()
                    await trio.sleep_until(_trio_time(at))
                    room = member.churn_rooms[step % len(member.churn_rooms)]
                    action = step % 3
                    step += 1
                    if action == 0:
                        await _read_history(http, client, plan.room_ids[room])
                    elif action == 1:
                        mark = client.last_seq(room)
                        await client.send(_event("leave_room", plan.room_ids[room]))
                        await trio.sleep(0.2)
                        await client.send(_event("join_room", plan.room_ids[room]))
                        await trio.sleep(0.05)
                        client.stats.rejoins += 1
                        await _catch_up(http, client, room, plan.room_ids[room], mark)
                    else:
                        break
                connection.cancel_scope.cancel()
            # Reconnect: a new websocket (auto-joins every room at CONNECT), then catch up each room.
            marks = {r: client.last_seq(r) for r in member.churn_rooms}
            await client.stream.aclose()
            fresh = await Client.connect(plan.host, plan.port, member.token, member.index, client.stats)
            client.stream = fresh.stream
            client.stats.reconnects += 1
            for r, mark in marks.items():
                await _catch_up(http, client, r, plan.room_ids[r], mark)


def _event(name: str, room_id: str) -> bytes:
    return client_frame(b"42" + msgspec.json.encode([name, {"roomId": room_id}]))


async def _read_history(http: httpx.AsyncClient, client: Client, room_id: str) -> None:
    started = time.monotonic_ns()
    r = await http.get(f"/api/chatrooms/{room_id}/messages", params={"limit": 100})
    r.raise_for_status()
    client.stats.history_reads += 1
    client.stats.history_latency.record((time.monotonic_ns() - started) // 1000)


async def _catch_up(http: httpx.AsyncClient, client: Client, room: int, room_id: str, after: int) -> None:
    while True:
        r = await http.get(f"/api/chatrooms/{room_id}/messages", params={"after_seq": after, "limit": 1000})
        r.raise_for_status()
        rows = r.json()
        client.absorb(r.content, live=False)
        if len(rows) < 1000:
            return
        after = rows[-1]["seq"]


def _trio_time(monotonic_at: float) -> float:
    return trio.current_time() + (monotonic_at - time.monotonic())


async def _ticker(stats: Stats, begin: float, queue: Any, worker: int) -> None:
    second = 1
    while True:
        await trio.sleep_until(_trio_time(begin + second))
        sent, acked, delivered = stats.tick()
        p99 = stats.last_second.percentile_ms(99)
        queue.put(("tick", (worker, second, sent, acked, delivered, p99)))  # for the live view
        second += 1


async def _send_on_schedule(
    client: Client, member: MemberPlan, plan: WorkerPlan, begin: float, errors: list[str], *, paddings: list[str]
) -> None:
    """Open loop: message k of a stream is due at begin + k / rate, whatever the server does. Message k's text
    is ``paddings[k % TEXTS_PER_SENDER]`` when there are several."""
    await trio.sleep_until(_trio_time(begin))
    counts = [0] * len(member.sends)
    padding = paddings[0]
    cycling = len(paddings) > 1  # a local: the per-message path pays one truth test for it
    end = begin + plan.duration
    try:
        while True:
            now = time.monotonic()
            frames = []
            for i, (room, rate) in enumerate(member.sends):
                due = min(math.floor((min(now, end) - begin) * rate) + 1, stream_length(plan.duration, rate))
                for k in range(counts[i], due):
                    scheduled_ns = int((begin + k / rate) * 1e9)
                    if cycling:
                        padding = paddings[k % TEXTS_PER_SENDER]
                    frames.append(client.frame_for(room, plan.room_ids[room], k, scheduled_ns, padding))
                counts[i] = max(counts[i], due)
            if frames:
                await client.send(b"".join(frames))
                client.stats.sent_messages(len(frames))
            if now >= end:
                return
            next_due = min(begin + counts[i] / rate for i, (_, rate) in enumerate(member.sends))
            await trio.sleep_until(_trio_time(min(next_due, end)))
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        errors.append(f"sender {client.index}: connection lost ({exc!r})")


# Each sender's messages cycle through this many texts: sizes spread over the scenario's range, and few enough to
# make (and keep the send templates of) in well under a second for the quick preset's 30 senders.
TEXTS_PER_SENDER = 32


def _paddings(plan: WorkerPlan, member: int) -> list[str]:
    """What follows each message's stamp: the scenario's chat texts (seeded by the member), or ``padding`` x's."""
    if plan.text is None:
        return ["x" * plan.padding]
    return texts(member, TEXTS_PER_SENDER, plan.text.min_chars, plan.text.max_chars)


def _report(
    plan: WorkerPlan, clients: list[Client], stats: Stats, *, cpu: float, wall: float, errors: list[str]
) -> WorkerReport:
    accepted = [(c.index, room, count) for c in clients for room, count in c.accepted.items()]
    seen = [(c.index, sender, room, t.summary()) for c in clients for (sender, room), t in c.trackers.items()]
    return WorkerReport(
        plan.worker,
        len(clients),
        stats.sent,
        stats.acked,
        sum(c.rejected for c in clients),
        stats.delivered,
        accepted,
        seen,
        [(c.index, c.counted) for c in clients if not c.check],
        stats.delivery_latency().encode(),
        stats.ack_latency().encode(),
        stats.timeline,
        cpu,
        wall,
        errors,
        {
            "history_reads": stats.history_reads,
            "rejoins": stats.rejoins,
            "reconnects": stats.reconnects,
            "recovered_from_history": stats.recovered,
        },
        stats.history_latency.encode(),
        [(c.index, room, count) for c in clients for room, count in c.written.items()],
    )
