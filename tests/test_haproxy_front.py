"""HAProxy (``deploy/haproxy.cfg`` via ``tools/cluster.py``) in front of two real server processes on one database.

What the front guarantees, and only that: every request of an Engine.IO long-polling session reaches the
process that holds it, new sessions spread over the processes, websockets upgrade through it, and a process
told to stop is taken out within ~2 s while new clients still get in. Rooms are not shared between the
processes here (each process keeps its own room registry), so each client uses a room made on its own process.

Real processes on 127.0.0.1 only. Without HAProxy (and no way to install it) the tests are skipped, or fail
when ``CI`` is set, as the PostgreSQL ones are (``tests/pg_fixtures.py``).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import socketio
import trio

from tests.conftest import bearer
from tests.node_peer import NodeClient, node_or_skip
from tests.pg_fixtures import installed_or_skip, postgres_bin_dir, temp_data_dir
from tests.raw_client import raw_client
from tests.server_process import ROOT, ServerProcess, start_server_process
from tests.sio_peer import Peer, make_room, make_users, wait_until
from tools.cluster import (
    TEMPLATE,
    HaproxyFront,
    HaproxyUnavailable,
    check_config,
    ensure_haproxy,
    render_config,
)
from tools.pg_cluster import PgCluster, free_port

SERVER_ARGS = ["--bcrypt-rounds", "4", "--bcrypt-batch-rounds", "4", "--shutdown-timeout", "5"]
STEADY_SECONDS = 5.0  # how long the polling clients keep sending through the front


def haproxy_or_skip() -> Path:
    """The ``haproxy`` executable (installed when missing and root), or skip (fail under CI)."""
    return installed_or_skip(ensure_haproxy, HaproxyUnavailable)


class Cluster:
    """Two server processes (``app1``, ``app2``, as HAProxy names them) and the front."""

    def __init__(self, front: HaproxyFront, backends: dict[str, ServerProcess]) -> None:
        self.front = front
        self.backends = backends
        self.url = front.url

    async def states(self) -> dict[str, str]:
        return await trio.to_thread.run_sync(self.front.server_states)

    async def home(self, peer: Peer) -> str:
        """The process that HAProxy's stick table sends this peer's Engine.IO session to."""
        home = await trio.to_thread.run_sync(self.front.sticky_server, peer.sio.eio.sid)
        assert home in self.backends, f"HAProxy did not learn where session {peer.sio.eio.sid} lives"
        return home

    async def server_rows(self) -> dict[str, dict[str, str]]:
        rows = await trio.to_thread.run_sync(self.front.stats)
        return {row["svname"]: row for row in rows if row["svname"] in self.backends}


async def start_front(nursery: trio.Nursery, pg_url: str, *extra_args: str, template: str | None = None) -> Cluster:
    haproxy = haproxy_or_skip()
    args = ["--database", pg_url, *SERVER_ARGS, *extra_args]
    backends = [await start_server_process(nursery, args) for _ in range(2)]
    for backend in backends:
        async with httpx.AsyncClient(base_url=backend.url, timeout=10) as http:
            await wait_until_ready(http)
    front = HaproxyFront([b.port for b in backends], free_port(), haproxy=haproxy, template=template)
    await trio.to_thread.run_sync(front.start)
    return Cluster(front, dict(zip(front.servers, backends, strict=True)))


async def stop_front(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(cluster.front.stop)
    for backend in cluster.backends.values():
        if backend.proc.returncode is None:
            await backend.terminate()


async def wait_until_ready(http: httpx.AsyncClient) -> None:
    with trio.fail_after(15):
        while (await http.get("/ready")).status_code != 200:  # noqa: ASYNC110 (another process's state)
            await trio.sleep(0.05)


@pytest.fixture
async def cluster(nursery: trio.Nursery, pg_url: str) -> AsyncIterator[Cluster]:
    started = await start_front(nursery, pg_url)
    try:
        yield started
    finally:
        await stop_front(started)


async def connect(peers: list[Peer], url: str, name: str, token: str, transports: list[str] | None = None) -> Peer:
    peer = Peer(name)
    peers.append(peer)
    await peer.connect(url, token, transports=transports)
    return peer


async def gauge(url: str, transport: str) -> int:
    """The process's own count of open Engine.IO sessions on ``transport`` (``minitalk_connections``)."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        text = (await http.get("/metrics")).text
    match = re.search(rf'^minitalk_connections{{transport="{transport}"}} (\S+)$', text, re.MULTILINE)
    assert match is not None, text
    return int(float(match.group(1)))


async def test_polling_sessions_stay_on_their_process_and_spread_over_both(cluster: Cluster, peers: list[Peer]) -> None:
    names = [f"p{i}" for i in range(4)]
    async with httpx.AsyncClient(base_url=cluster.url, timeout=30) as http:
        tokens = await make_users(http, names)  # REST through the front: any process, one database
    polling = [await connect(peers, cluster.url, n, tokens[n], transports=["polling"]) for n in names]
    homes = {peer.name: await cluster.home(peer) for peer in polling}
    assert set(homes.values()) == {"app1", "app2"}, f"sessions spread over both processes: {homes}"
    for name, backend in cluster.backends.items():
        held = sum(1 for home in homes.values() if home == name)
        assert await gauge(backend.url, "polling") == held, f"{name} holds the sessions HAProxy sends it"

    # Each peer: a room made on its own process (rooms are not shared between processes yet), joined over the
    # session, then a few seconds of acked sends: every send is a POST, every ack and echo comes back on a
    # long-poll GET, all through the front. One request at the wrong process would end the session.
    rooms: dict[str, str] = {}
    for peer in polling:
        async with httpx.AsyncClient(base_url=cluster.backends[homes[peer.name]].url, timeout=30) as http:
            rooms[peer.name] = await make_room(http, tokens[peer.name], [], name=f"room of {peer.name}")
        await peer.emit("join_room", {"roomId": rooms[peer.name]})
    await wait_until(lambda: all(p.received("joined_room") == [{"roomId": rooms[p.name]}] for p in polling))
    before = await cluster.server_rows()
    acks: dict[str, list[int]] = {peer.name: [] for peer in polling}

    async def keep_sending(peer: Peer) -> None:
        deadline = trio.current_time() + STEADY_SECONDS
        while trio.current_time() < deadline:
            ack = await peer.call("send_message", {"roomId": rooms[peer.name], "content": "through the front"})
            assert ack["ok"] is True, ack
            acks[peer.name].append(ack["seq"])
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        for peer in polling:
            nursery.start_soon(keep_sending, peer)
    for peer in polling:
        sent = acks[peer.name]
        assert sent == list(range(1, len(sent) + 1)) and len(sent) >= 10, (peer.name, sent)
        await wait_until(lambda p=peer: len(p.received("message")) == len(acks[p.name]))  # type: ignore[misc]
        assert peer.sio.connected and peer.transport == "polling" and not peer.disconnected.is_set()
        assert await cluster.home(peer) == homes[peer.name], "the session never moved"
    after = await cluster.server_rows()
    for name in cluster.backends:
        requests = int(after[name]["req_tot"]) - int(before[name]["req_tot"])
        assert requests >= 20, f"{name} served {requests} requests of the steady part"
        assert after[name]["hrsp_4xx"] == "0" and after[name]["hrsp_5xx"] == "0", "no 'Session ID unknown'"


async def test_without_the_stick_rules_polling_breaks(nursery: trio.Nursery, pg_url: str, peers: list[Peer]) -> None:
    """The control: HAProxy balances each request, so without the sid table a polling session cannot work."""
    template = "".join(line for line in TEMPLATE.read_text().splitlines(True) if "stick match" not in line)
    # A short ping interval: the long-poll GET that python-engineio leaves behind returns soon after the failure.
    cluster = await start_front(nursery, pg_url, "--ping-interval", "1", template=template)
    try:
        async with httpx.AsyncClient(base_url=cluster.url, timeout=30) as http:
            tokens = await make_users(http, ["c"])
        peer = Peer("c")
        peers.append(peer)

        def attempt() -> None:
            url = f"{cluster.url}?token={tokens['c']}"
            peer.sio.connect(url, transports=["polling"], wait_timeout=3)

        with pytest.raises(socketio.exceptions.ConnectionError):
            await trio.to_thread.run_sync(attempt)
            # Connected all the same (the first requests happened to land together): it cannot last.
            await wait_until(peer.disconnected.is_set, within=10)
            raise socketio.exceptions.ConnectionError("disconnected")
        rows = await cluster.server_rows()
        assert sum(int(row["hrsp_4xx"]) for row in rows.values()) >= 1, "a request reached the other process"
    finally:
        await stop_front(cluster)


async def test_python_socketio_upgrades_to_websocket_through_the_front(cluster: Cluster, peers: list[Peer]) -> None:
    async with httpx.AsyncClient(base_url=cluster.url, timeout=30) as http:
        tokens = await make_users(http, ["w", "direct"])
    # The load test's client: default transports (polling, then the upgrade), its "Connection: keep-alive".
    peer = await connect(peers, cluster.url, "w", tokens["w"])
    await wait_until(lambda: peer.transport == "websocket")
    home = await cluster.home(peer)  # the upgrade request named the sid: it went where the session lives
    ack = await peer.call("send_message", {"roomId": "no-such-room", "content": "x"})
    assert ack == {"ok": False, "error": "You are not a member of this chat room"}
    for name, backend in cluster.backends.items():
        assert await gauge(backend.url, "websocket") == (1 if name == home else 0)
        assert await gauge(backend.url, "polling") == 0
    # A websocket from the start: one connection, no sid to learn, any process.
    direct = await connect(peers, cluster.url, "direct", tokens["direct"], transports=["websocket"])
    assert direct.transport == "websocket"
    assert (await direct.call("send_message", {"roomId": "no-such-room", "content": "x"}))["ok"] is False
    assert sum([await gauge(b.url, "websocket") for b in cluster.backends.values()]) == 2


async def test_frontend_client_connects_and_upgrades_through_the_front(cluster: Cluster, nursery: trio.Nursery) -> None:
    """socket.io-client 4.8.1 on Node, as the frontend calls it: it keeps no cookies, the sid table suffices."""
    node_exe = node_or_skip()
    async with httpx.AsyncClient(base_url=cluster.url, timeout=30) as http:
        tokens = await make_users(http, ["f"])
    node = await NodeClient.start(nursery, node_exe, cluster.url, tokens["f"])
    try:
        await wait_until(lambda: bool(node.of("upgrade")))
        await trio.sleep(2)  # several pings' worth of nothing going wrong would show here
        assert [e["transport"] for e in node.of("open")] == ["polling"], node.describe()
        assert [e["transport"] for e in node.of("upgrade")] == ["websocket"], node.describe()
        assert len(node.connects) == 1 and not node.of("disconnect") and not node.of("connect_error"), node.describe()
        counts = [await gauge(b.url, "websocket") for b in cluster.backends.values()]
        assert sorted(counts) == [0, 1]
    finally:
        await node.exit()


async def test_a_stopping_process_is_taken_out_and_new_clients_still_connect(
    cluster: Cluster, peers: list[Peer]
) -> None:
    names = [f"n{i}" for i in range(4)]
    async with httpx.AsyncClient(base_url=cluster.url, timeout=30) as http:
        tokens = await make_users(http, names)
    # A server starts "UP 1/2" (up, health not yet full; one failed check would take it out) until its next
    # good check: the measurement below starts from full health, the slowest case.
    with trio.fail_after(5):
        while await cluster.states() != {"app1": "UP", "app2": "UP"}:  # noqa: ASYNC110 (HAProxy's state)
            await trio.sleep(0.05)
    victim = cluster.backends["app2"]
    victim.proc.send_signal(signal.SIGTERM)  # /ready goes 503 and the listener closes: the checks fail
    start = trio.current_time()
    with trio.fail_after(5):
        while not (await cluster.states())["app2"].startswith("DOWN"):  # noqa: ASYNC110 (HAProxy's state)
            await trio.sleep(0.05)
    taken_out = trio.current_time() - start
    assert taken_out < 3, f"HAProxy took {taken_out:.1f} s to mark the stopping process DOWN"
    assert (await cluster.states())["app1"] == "UP"
    with trio.fail_after(15):
        assert await victim.proc.wait() == 0, "a graceful stop"

    fresh = [await connect(peers, cluster.url, n, tokens[n], transports=["polling"]) for n in names]
    assert [await cluster.home(peer) for peer in fresh] == ["app1"] * len(fresh)
    assert await gauge(cluster.backends["app1"].url, "polling") == len(fresh)
    for peer in fresh:
        ack = await peer.call("send_message", {"roomId": "no-such-room", "content": "x"})
        assert ack["ok"] is False and peer.sio.connected


def test_render_config_fills_the_three_sections_and_keeps_the_rest() -> None:
    template = TEMPLATE.read_text()
    rendered = render_config([5001, 5002], 6000, Path("/tmp/x/admin.sock"))
    assert "    bind 127.0.0.1:6000\n" in rendered and "bind 127.0.0.1:4000" not in rendered
    assert "    stats socket /tmp/x/admin.sock mode 600 level admin\n" in rendered
    servers = re.findall(r"^    server .*$", rendered, re.MULTILINE)
    assert servers == ["    server app1 127.0.0.1:5001", "    server app2 127.0.0.1:5002"]
    unmarked = re.compile(r"^[ \t]*# >>> (\w+)\n.*?^[ \t]*# <<< \1\n", re.MULTILINE | re.DOTALL)
    assert unmarked.sub("", rendered) == unmarked.sub("", template), "everything outside the sections as it is"
    assert render_config([5001, 5002], 6000, Path("/tmp/x/admin.sock"), template=rendered) == rendered
    with pytest.raises(ValueError, match="at least one backend"):
        render_config([], 6000, Path("/tmp/x/admin.sock"))
    with pytest.raises(ValueError, match="cannot be written"):
        render_config([5001], 6000, Path("/tmp/with space/admin.sock"))
    with pytest.raises(ValueError, match="must mark each"):
        render_config([5001], 6000, Path("/tmp/x/admin.sock"), template=template.replace("# >>> stats", "#"))


def test_haproxy_accepts_the_template_and_a_rendered_copy(tmp_path: Path) -> None:
    haproxy = haproxy_or_skip()
    check_config(haproxy, TEMPLATE)
    rendered = tmp_path / "haproxy.cfg"
    rendered.write_text(render_config([5001, 5002, 5003], 6000, tmp_path / "admin.sock"))
    check_config(haproxy, rendered)


async def test_run_command_starts_everything_and_stops_it_in_order(nursery: trio.Nursery) -> None:
    """``python -m tools.cluster run``: PostgreSQL, two servers, HAProxy; SIGTERM stops them in that reverse order."""
    haproxy_or_skip()
    bin_dir = postgres_bin_dir()
    with temp_data_dir() as data:
        port = free_port()
        argv = [sys.executable, "-m", "tools.cluster", "run", "--processes", "2", "--port", str(port)]
        argv += ["--data", str(data), "--pg-port", str(free_port()), "--", *SERVER_ARGS]
        run = partial(trio.run_process, argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        proc: trio.Process = await nursery.start(run)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = bytearray(), bytearray()

        async def drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
            while chunk := await stream.receive_some(65536):
                into += chunk

        nursery.start_soon(drain, proc.stdout, out)
        nursery.start_soon(drain, proc.stderr, err)
        try:
            await wait_until(lambda: b"cluster: ready on" in out or proc.returncode is not None, within=60)
            assert proc.returncode is None, f"{out.decode()}\n{err.decode()}"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                assert (await http.get("/ready")).status_code == 200
                tokens = await make_users(http, ["r"])
            assert tokens["r"]
        finally:
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                code = await proc.wait()
        lines = [line.split("  ")[0] for line in out.decode().splitlines() if line.startswith("cluster: ")]
        assert code == 0, f"{out.decode()}\n{err.decode()}"
        assert lines == [
            "cluster: postgresql",
            "cluster: app1",
            "cluster: app2",
            "cluster: haproxy",
            f"cluster: ready on http://127.0.0.1:{port}; Ctrl-C stops HAProxy, then the servers, then PostgreSQL",
            "cluster: haproxy stopped",
            "cluster: app1 stopped (exit code 0)",
            "cluster: app2 stopped (exit code 0)",
            "cluster: postgresql stopped",
        ]
        assert b"app1| " in err and b"app2| " in err, "each server's log, named"
        assert not PgCluster(data, bin_dir=bin_dir).is_running()


async def test_kill_9_of_a_clients_process_it_recovers_on_another_through_the_front(
    cluster: Cluster, nursery: trio.Nursery
) -> None:
    """The frontend's client on one process; messages sent through the other; its process is killed: it
    reconnects through HAProxy to the survivor, recovers from the log, and shows every message exactly once."""
    node_exe = node_or_skip()
    async with httpx.AsyncClient(base_url=cluster.url, timeout=30) as http:
        tokens = await make_users(http, ["f", "s"])
        room = await make_room(http, tokens["s"], ["f"])
    node = await NodeClient.start(nursery, node_exe, cluster.url, tokens["f"])
    try:
        await wait_until(lambda: bool(node.of("upgrade")))
        homes = [name for name, b in cluster.backends.items() if await gauge(b.url, "websocket") == 1]
        assert len(homes) == 1, node.describe()
        victim = cluster.backends[homes[0]]
        [survivor] = [b for name, b in cluster.backends.items() if name != homes[0]]
        acked: list[int] = []
        async with raw_client(survivor.url, tokens["s"]) as sender:
            for i in range(1, 301):
                await sender.emit("send_message", {"roomId": room, "content": f"m{i}"}, ack_id=i)
                while True:
                    event, data = await sender.next_event()
                    if event == f"ack:{i}":
                        assert data["ok"], data
                        acked.append(data["seq"])
                        break
                if i == 100:
                    await wait_until(lambda: len(node.messages) >= 50, within=10)
                    victim.proc.kill()  # kill -9: its sessions vanish without a close
                await trio.sleep(0.01)
        await wait_until(lambda: len(node.messages) >= 300, within=30)
        await trio.sleep(0.5)  # a duplicate would arrive about now
        seqs = [m["seq"] for m in node.messages if m["roomId"] == room]
        assert acked == list(range(1, 301))
        assert seqs == list(range(1, 301)), f"missing {sorted(set(acked) - set(seqs))[:10]}, {len(seqs)} shown"
        assert len(node.connects) == 2 and node.connects[-1]["recovered"] is True, node.describe()
    finally:
        await node.exit()


async def test_one_room_over_both_processes_through_the_front_python_socketio_and_the_frontend_client(
    cluster: Cluster, peers: list[Peer], nursery: trio.Nursery
) -> None:
    """The load test's client (python-socketio) and the frontend's (socket.io-client) in one room, spread over
    both processes: each gets every message once, in seq order; history is the same through either process."""
    node_exe = node_or_skip()
    names = ["p0", "p1", "p2", "p3"]
    async with httpx.AsyncClient(base_url=cluster.url, timeout=30) as http:
        tokens = await make_users(http, [*names, "f"])
        room = await make_room(http, tokens["p0"], [*names[1:], "f"])
    sio = [await connect(peers, cluster.url, name, tokens[name]) for name in names]
    node = await NodeClient.start(nursery, node_exe, cluster.url, tokens["f"])
    try:
        await wait_until(lambda: bool(node.connects))
        homes = {await cluster.home(peer) for peer in sio if peer.transport == "polling"} | {
            name for name, b in cluster.backends.items() if await gauge(b.url, "websocket")
        }
        assert homes == set(cluster.backends), "the members are spread over both processes"
        for i in range(25):
            for peer in sio:
                ack = await peer.call("send_message", {"roomId": room, "content": f"{peer.name}-{i}"})
                assert ack["ok"], ack
        everything = list(range(1, 101))
        await wait_until(lambda: all(len(p.received("message")) >= 100 for p in sio) and len(node.messages) >= 100)
        await trio.sleep(0.5)  # a duplicate would arrive about now
        for peer in sio:
            assert [m["seq"] for m in peer.received("message")] == everything, peer.name
        assert [m["seq"] for m in node.messages] == everything, node.describe()
        histories = []
        for backend in cluster.backends.values():
            async with httpx.AsyncClient(base_url=backend.url, timeout=30) as http:
                r = await http.get(
                    f"/api/chatrooms/{room}/messages", params={"limit": 1000}, headers=bearer(tokens["f"])
                )
                histories.append(r.json())
        assert histories[0] == histories[1] and [m["seq"] for m in histories[0]] == everything
    finally:
        await node.exit()
