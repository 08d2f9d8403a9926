"""The scenarios: who is in which room, who sends where and how fast, for how long.

Presets reproduce the MinitalkChat load test (contract §6.2-6.3) with the load it *really* offers; the others
come from the benchmarking seed (single publisher, multiple publishers, fan-out, slow consumer, stress ramp).
Every scenario is bounded in time (``duration``) and in count (users, rooms, rates are fixed numbers).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import msgspec

SEED = 2026  # the same rooms and members in every run, so results compare


def stream_length(duration: float, rate: float) -> int:
    """Messages in one sender's stream: floor(duration x rate), forgiving float error (2970/90 x 30 is 989.99...)."""
    return math.floor(duration * rate + 1e-6)


class Send(msgspec.Struct, frozen=True, array_like=True):
    user: int
    room: int
    rate: float  # messages per second


class Text(msgspec.Struct, frozen=True):
    """Chat-like content (bench/chattext.py) in place of the padding: each message's text is between ``min_chars``
    and ``max_chars`` characters (ASCII: as many bytes), after the ``<scheduled>|<sender>|<room>|<n>|`` stamp."""

    min_chars: int
    max_chars: int


class Scenario(msgspec.Struct, frozen=True):
    name: str
    description: str
    users: int
    rooms: list[list[int]]  # member user indexes; the first creates the room
    sends: list[Send]
    duration: float
    padding: int = 60  # extra content characters, so a message is the size of a load-test greeting
    stalled: list[int] = []  # users that connect and then never read (slow-consumer scenario)
    churn: dict[int, list[int]] = {}  # mixed scenario: user → rooms it reads history of, rejoins, reconnects to
    arithmetic: str = ""  # how the offered load was derived, for the report
    # This fraction of the members (never stalled ones, churners or slow readers) use Engine.IO long-polling, as
    # clients behind proxies that block websockets do; the rest use websocket.
    polling_share: float = 0.0
    # slow-readers scenario: these members read at ``read_fraction`` of their rooms' message rate for the first
    # ``slow_for`` seconds of the load, then at full speed (bench/slowread.py).
    slow: list[int] = []
    read_fraction: float = 1.0
    slow_for: float = 0.0
    drain: float = 2.0  # seconds receivers keep reading after the last scheduled send (late deliveries count)
    text: Text | None = None  # chat-like text of this size instead of ``padding`` x's (large-messages, --message-bytes)
    # This fraction of the members offer permessage-deflate in their websocket handshake (long-polling members
    # never do); the server's answer decides whether they inflate (bench/inflate.py).
    deflate_share: float = 0.0

    def polling_members(self) -> set[int]:
        """Every member where the running share crosses a whole number: spread evenly over the users."""
        share = self.polling_share
        skip = set(self.stalled) | set(self.churn) | set(self.slow)
        return {u for u in range(self.users) if int((u + 1) * share) > int(u * share) and u not in skip}

    def deflate_members(self) -> set[int]:
        """The members that offer permessage-deflate, spread as ``polling_members``; never a polling member."""
        share = self.deflate_share
        skip = self.polling_members()
        return {u for u in range(self.users) if int((u + 1) * share) > int(u * share) and u not in skip}

    def delivery_rate(self, user: int) -> float:
        """Messages per second that ``user``'s rooms produce (its own included: a sender gets its messages too)."""
        return sum(s.rate for s in self.sends if user in self.rooms[s.room])

    @property
    def offered_rate(self) -> float:
        return sum(s.rate for s in self.sends)

    def scheduled_messages(self) -> int:
        """What the open-loop schedule sends: each stream floor(duration x rate) messages (bench/worker.py)."""
        return sum(stream_length(self.duration, s.rate) for s in self.sends)

    @property
    def expected_deliveries_per_s(self) -> float:
        sizes = [len([m for m in members if m not in self.stalled]) for members in self.rooms]
        return sum(s.rate * sizes[s.room] for s in self.sends)


# name: (users, rooms, seconds, nominal rate) from the load test's menu (contract §6.2)
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (3, 2, 30, 10),
    "light": (10, 5, 60, 50),
    "quick": (30, 10, 30, 1000),
    "medium": (100, 15, 60, 5000),
    "strong": (500, 20, 120, 10000),
    "extreme": (1000, 25, 180, 20000),
    "mega": (5000, 30, 300, 50000),
}


def original_offered_rate(users: int, rate: int) -> tuple[float, str]:
    """What the original load test really offers, and the arithmetic (contract §6.3, threaded mode)."""
    sockets = min(users, 1000)
    if 100 < rate <= 1000:
        threads = min(30, sockets)
        per_worker = rate // threads
        batch = max(1, min(10, per_worker // 10))
        offered = threads * batch * per_worker  # each thread: `batch` emits every 1/per_worker s
        return offered, (
            f"threads = min(30, {sockets}) = {threads}; messages_per_worker = {rate} // {threads} = {per_worker};"
            f" sleep = 1/{per_worker} s; batch = max(1, min(10, {per_worker} // 10)) = {batch};"
            f" offered = {threads} x {batch} x {per_worker} = {offered} msg/s (the banner says {rate})"
        )
    return float(rate), (
        f"nominal {rate} msg/s: the contract documents the original's thread arithmetic only for 100 < rate ≤ 1000"
        " (the quick preset), so this preset offers its nominal rate"
    )


def preset(name: str, duration: float | None = None) -> Scenario:
    users, room_count, seconds, rate = PRESETS[name]
    rng = random.Random(SEED)
    creator = rng.randrange(users)  # one creator for every room, as the load test does (§6.3-2)
    rooms = []
    for _ in range(room_count):
        picked = rng.sample(range(users), min(users, rng.randint(3, 8)))
        rooms.append([creator, *[u for u in picked if u != creator]])
    pairs = [(user, room) for room, members in enumerate(rooms) for user in members]
    offered, arithmetic = original_offered_rate(users, rate)
    sends = [Send(user, room, offered / len(pairs)) for user, room in pairs]
    return Scenario(
        name,
        f"load test preset '{name}': {users} users, {room_count} rooms, offered {offered:g} msg/s"
        " spread evenly over every (socket, room) pair, as its random pair choice does on average",
        users,
        rooms,
        sends,
        duration or seconds,
        arithmetic=arithmetic,
    )


def single(rate: float = 100, duration: float = 30) -> Scenario:
    return Scenario(
        "single",
        f"one publisher, one consumer (latency baseline), {rate:g} msg/s",
        2,
        [[0, 1]],
        [Send(0, 0, rate)],
        duration,
    )


def multipub(publishers: int = 50, rate: float = 5000, duration: float = 30) -> Scenario:
    members = list(range(publishers))
    return Scenario(
        "multipub",
        f"{publishers} publishers in one room, {rate:g} msg/s in all",
        publishers,
        [members],
        [Send(u, 0, rate / publishers) for u in members],
        duration,
    )


def ingest(senders: int = 32, rate: float = 20000, duration: float = 10) -> Scenario:
    """Many senders, each alone in its own room: what the server accepts and commits, with one delivery each.

    ``python -m bench run stress --shape ingest`` finds the maximum (the old closed-loop ``bench.quickload
    ingest`` measured the same shape with a window of unacked sends instead of an open-loop schedule).
    """
    return Scenario(
        "ingest",
        f"{senders} senders, each alone in its own room, {rate:g} msg/s in all",
        senders,
        [[u] for u in range(senders)],
        [Send(u, u, rate / senders) for u in range(senders)],
        duration,
    )


def fanout(members: int = 1000, rate: float = 300, duration: float = 30) -> Scenario:
    return Scenario(
        "fanout",
        f"one room of {members} members, one publisher at {rate:g} msg/s ({members * rate:,.0f} deliveries/s)",
        members,
        [list(range(members))],
        [Send(0, 0, rate)],
        duration,
    )


def slow_consumer(members: int = 50, stalled: int = 5, rate: float = 200, duration: float = 30) -> Scenario:
    return Scenario(
        "slow-consumer",
        f"a room of {members}; {stalled} members stop reading; {rate:g} msg/s with"
        " 4 KB messages: the rest of the room must not notice",
        members,
        [list(range(members))],
        [Send(0, 0, rate)],
        duration,
        padding=4000,
        stalled=list(range(members - stalled, members)),
    )


def smoke(duration: float = 3) -> Scenario:
    """A few seconds, a few clients: the test suite's end-to-end check of the whole instrument."""
    return Scenario(
        "smoke",
        "3 users in 2 rooms, 20 msg/s each",
        3,
        [[0, 1, 2], [1, 2]],
        [Send(0, 0, 20), Send(1, 1, 20), Send(2, 0, 20)],
        duration,
    )


class SlowReading(msgspec.Struct, frozen=True):
    """The slow-readers scenario's knobs (``--slow-share``, ``--read-fraction``, ``--slow-for``)."""

    share: float = 1 / 3  # of the room members
    read_fraction: float = 0.1  # of the messages their rooms produce, read per second during the slow phase
    slow_for: float = 30.0  # seconds from the start of the load


def by_name(
    name: str,
    *,
    duration: float | None = None,
    rate: float | None = None,
    members: int | None = None,
    polling_share: float = 0.0,
    slow: SlowReading | None = None,
    deflate_share: float | None = None,
    message_bytes: int | None = None,
) -> Scenario:
    """A scenario by name; ``deflate_share`` and ``message_bytes`` (chat text of exactly that many characters)
    override its own (None: keep them)."""
    if name == "slow-readers":
        scenario = slow_readers(slow or SlowReading(), rate=rate or QUICK_REAL_RATE, duration=duration)
    else:
        scenario = _build(name, duration=duration, rate=rate, members=members)
    if polling_share:
        scenario = msgspec.structs.replace(scenario, polling_share=polling_share)
    if message_bytes is not None:
        scenario = msgspec.structs.replace(
            scenario,
            text=Text(message_bytes, message_bytes),
            description=f"{scenario.description}; {message_bytes:,}-character chat text a message",
        )
    if deflate_share is not None and deflate_share != scenario.deflate_share:
        scenario = msgspec.structs.replace(
            scenario,
            deflate_share=deflate_share,
            description=f"{scenario.description}; {deflate_share:.0%} of the members offer permessage-deflate",
        )
    return scenario


def _build(name: str, *, duration: float | None, rate: float | None, members: int | None) -> Scenario:
    if name in PRESETS:
        return preset(name, duration)
    kwargs: dict[str, float] = {}
    if duration is not None:
        kwargs["duration"] = duration
    if rate is not None:
        kwargs["rate"] = rate
    if members is not None and name in ("fanout", "slow-consumer"):
        kwargs["members"] = members
    if name not in BUILDERS:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(names())}")
    return BUILDERS[name](**kwargs)


def names() -> list[str]:
    return [*PRESETS, *BUILDERS, "slow-readers", "stress"]


QUICK_REAL_RATE = 2970.0  # what the quick preset really offers (original_offered_rate(30, 1000))
# After the slow phase: full-speed reading for this long under load (unless --duration says otherwise), then a
# drain long enough for a member 30 s behind to read its backlog at full speed (the client reads a quick member's
# second of traffic in well under 0.1 s), short enough to keep the run bounded.
SLOW_READERS_RECOVERY_S = 30.0
SLOW_READERS_DRAIN_S = 10.0


def slow_readers(knobs: SlowReading, *, rate: float = QUICK_REAL_RATE, duration: float | None = None) -> Scenario:
    """The quick preset's rooms and real load; a share of the members read slowly for a while, then catch up.

    Slow readers are picked as evenly as ``polling_members`` picks (every member where the running share crosses
    a whole number), over the users that are in a room: the quick preset leaves a few users in none.
    """
    base = preset("quick", duration or knobs.slow_for + SLOW_READERS_RECOVERY_S)
    in_rooms = sorted({u for members in base.rooms for u in members})
    share = knobs.share
    slow = [u for i, u in enumerate(in_rooms) if int((i + 1) * share) > int(i * share)]
    per_pair = rate / len(base.sends)
    return Scenario(
        "slow-readers",
        f"the quick preset's rooms at {rate:g} msg/s for {base.duration:g} s; {len(slow)} of {len(in_rooms)}"
        f" members read at {knobs.read_fraction:.0%} of their rooms' message rate for the first"
        f" {knobs.slow_for:g} s, then at full speed ({SLOW_READERS_DRAIN_S:g} s drain)",
        base.users,
        base.rooms,
        [Send(s.user, s.room, per_pair) for s in base.sends],
        base.duration,
        arithmetic=base.arithmetic if rate == QUICK_REAL_RATE else "",
        slow=slow,
        read_fraction=knobs.read_fraction,
        slow_for=knobs.slow_for,
        drain=SLOW_READERS_DRAIN_S,
    )


def endurance(rate: float = 2970, duration: float = 600) -> Scenario:
    """A long run at a fixed rate on the quick preset's rooms: memory growth and latency drift."""
    base = preset("quick", duration)
    per_pair = rate / len(base.sends)
    return Scenario(
        "endurance",
        f"the quick preset's rooms at a steady {rate:g} msg/s for {duration:g} s: memory"
        " growth per minute and latency drift",
        base.users,
        base.rooms,
        [Send(s.user, s.room, per_pair) for s in base.sends],
        duration,
    )


LARGE_TEXT = Text(2048, 8192)  # chat text of 2-8 KB a message (bench/chattext.py says what text and why)


def large_messages(rate: float = 1000, duration: float = 30) -> Scenario:
    """The quick preset's rooms with 2-8 KB chat messages, half the members offering permessage-deflate.

    What compression saves on the wire and costs the server (issue 18): ``--ws-compression on,off`` runs it
    against a fresh server of each setting into one report. The rate is the quick preset's rooms at 1,000 msg/s
    by default, a third of its real load: at 5 KB a message that is 5 MB/s in and about 30 MB/s out to the
    rooms' members, which one server core and one client core carry with room to spare.
    """
    return msgspec.structs.replace(
        endurance(rate, duration),  # the quick preset's rooms at a steady rate
        name="large-messages",
        description=f"the quick preset's rooms at {rate:g} msg/s of {LARGE_TEXT.min_chars:,}-{LARGE_TEXT.max_chars:,}"
        " character chat text; 50% of the members offer permessage-deflate",
        text=LARGE_TEXT,
        deflate_share=0.5,
    )


def mixed(rate: float = 1000, churners: int = 5, duration: float = 30) -> Scenario:
    """Sends, plus members that read history, leave and rejoin, and reconnect and catch up by after_seq."""
    base = preset("quick", duration)
    rooms = [list(members) for members in base.rooms]
    churn: dict[int, list[int]] = {}
    for i in range(churners):
        user = base.users + i
        churn[user] = sorted({i % len(rooms), (i + 3) % len(rooms), (i + 6) % len(rooms)})
        for room in churn[user]:
            rooms[room].append(user)
    per_pair = rate / len(base.sends)
    return Scenario(
        "mixed",
        f"the quick preset's rooms at {rate:g} msg/s, plus {churners} members that every 3 s in"
        " turn read history, leave and rejoin a room, or reconnect, catching up by after_seq",
        base.users + churners,
        rooms,
        [Send(s.user, s.room, per_pair) for s in base.sends],
        duration,
        churn=churn,
    )


BUILDERS: dict[str, Callable[..., Scenario]] = {
    "single": single,
    "multipub": multipub,
    "ingest": ingest,
    "fanout": fanout,
    "slow-consumer": slow_consumer,
    "mixed": mixed,
    "endurance": endurance,
    "large-messages": large_messages,
    "smoke": smoke,
}
