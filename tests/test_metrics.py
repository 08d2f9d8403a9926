"""Metrics: a message's time in the server, the queue's bound, readiness, the memory limit, limits hit."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from server.metrics import memory_limit_bytes
from tests.conftest import RunningServer, make_config, start_server
from tests.raw_client import raw_client
from tests.sio_peer import make_room, make_users


def values(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


async def test_a_message_is_timed_from_receive_to_commit_and_from_commit_to_write(
    running: RunningServer, client: httpx.AsyncClient
) -> None:
    tokens = await make_users(client, ["ann", "bob"])
    room = await make_room(client, tokens["ann"], ["bob"])
    before = values((await client.get("/metrics")).text)
    assert before["minitalk_receive_to_commit_seconds_count"] == 0
    assert before["minitalk_commit_to_write_seconds_count"] == 0
    async with raw_client(running.url, tokens["bob"]) as bob, raw_client(running.url, tokens["ann"]) as ann:
        for i in range(3):
            await ann.emit("send_message", {"roomId": room, "content": f"m{i}"}, ack_id=i)
            with trio.fail_after(10):
                while (await bob.next_event())[0] != "message":
                    pass
                while (await ann.next_event())[0] != f"ack:{i}":  # read hers too: trio-websocket queues one
                    pass
    after = values((await client.get("/metrics")).text)
    # One observation per committed batch; three sends one after another are at least one batch, at most three.
    assert 1 <= after["minitalk_receive_to_commit_seconds_count"] <= 3
    assert 1 <= after["minitalk_commit_to_write_seconds_count"] <= 3
    assert after["minitalk_receive_to_commit_seconds_sum"] >= 0
    assert (
        after['minitalk_receive_to_commit_seconds_bucket{le="+Inf"}']
        == after["minitalk_receive_to_commit_seconds_count"]
    )


async def test_the_queue_bound_readiness_and_catch_up_backlog_are_exported(client: httpx.AsyncClient) -> None:
    now = values((await client.get("/metrics")).text)
    assert now["minitalk_ingest_queue_capacity_messages"] == 16384
    assert now["minitalk_ingest_queue_messages"] == 0
    assert now["minitalk_ready"] == 1
    assert now["minitalk_catchup_backlog_messages"] == 0
    assert now["minitalk_memory_limit_bytes"] == memory_limit_bytes()


def test_the_memory_limit_is_read_from_cgroup_v2_then_v1_and_none_is_zero(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    assert memory_limit_bytes((v2, v1)) == 0, "no cgroup files: no limit"
    v1.write_text("9223372036854771712\n")  # cgroup v1's "unlimited"
    assert memory_limit_bytes((v2, v1)) == 0
    v1.write_text("1073741824\n")
    assert memory_limit_bytes((v2, v1)) == 2**30
    v2.write_text("max\n")
    assert memory_limit_bytes((v2, v1)) == 0, "v2 first: max means none"
    v2.write_text("2147483648\n")
    assert memory_limit_bytes((v2, v1)) == 2**31


async def test_a_metrics_port_serves_metrics_and_the_chat_port_no_longer_does(
    nursery: trio.Nursery, db_path: Path
) -> None:
    server = await start_server(nursery, make_config(db_path, metrics_port=0))
    metrics_port = server.server.metrics_port_bound
    assert metrics_port is not None and metrics_port != server.port
    async with httpx.AsyncClient(timeout=10) as http:
        scrape = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "minitalk_build_info{" in scrape.text and "minitalk_ready 1.0" in scrape.text
        assert (await http.get(f"http://127.0.0.1:{metrics_port}/metrics?x=1")).status_code == 200
        assert (await http.get(f"http://127.0.0.1:{metrics_port}/other")).status_code == 404
        assert (await http.post(f"http://127.0.0.1:{metrics_port}/metrics")).status_code == 405
        assert (await http.get(f"{server.url}/metrics")).status_code == 404, "not on the public port"
        assert (await http.get(f"{server.url}/health")).status_code == 200
    # Garbage is that connection's problem: the port still answers afterwards.
    stream = await trio.open_tcp_stream("127.0.0.1", metrics_port)
    await stream.send_all(b"\x00\x01 not http\r\n\r\n")
    with trio.fail_after(10):
        while await stream.receive_some(1024):
            pass
    await stream.aclose()
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).status_code == 200
    await server.stop()
