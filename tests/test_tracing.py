"""Traces: off unless the OTEL_* environment asks; spans for REST, handshakes, CONNECTs and sampled sends,
exported over OTLP (gRPC and HTTP/protobuf) to a real receiver."""

from __future__ import annotations

import itertools
from pathlib import Path

import httpx
import pytest
import trio

from server.tracing import OFF, TracingConfigError, tracing_from_env
from tests.conftest import bearer
from tests.raw_client import raw_client
from tests.server_process import run_refused_server, start_server_process
from tests.sio_peer import make_room, make_users
from tools.otlp_sink import ReceivedSpan, running_sink, span_tree


def test_tracing_is_off_unless_an_endpoint_or_an_exporter_is_named() -> None:
    assert tracing_from_env({}, message_ratio=1.0) is OFF
    assert not OFF.enabled and OFF.message_ratio == 0 and not OFF.sample_message()
    assert tracing_from_env({"OTEL_TRACES_EXPORTER": "none"}, message_ratio=1.0) is OFF
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
    assert tracing_from_env({**on, "OTEL_SDK_DISABLED": "true"}, message_ratio=1.0) is OFF
    tracing = tracing_from_env({**on, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, message_ratio=0.5)
    assert tracing.enabled and tracing.message_ratio == 0.5
    tracing.shutdown()


def test_an_unknown_protocol_or_exporter_is_a_clear_error() -> None:
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
    with pytest.raises(TracingConfigError, match="http/json: use one of grpc, http/protobuf"):
        tracing_from_env({**on, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, message_ratio=0.01)
    with pytest.raises(TracingConfigError, match="zipkin"):
        tracing_from_env({"OTEL_TRACES_EXPORTER": "zipkin"}, message_ratio=0.01)


async def test_the_server_refuses_to_start_with_a_protocol_it_cannot_speak(tmp_path: Path) -> None:
    code, log = await run_refused_server(
        ["--database", f"sqlite:///{tmp_path / 'x.db'}"],
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"},
    )
    assert code == 2 and "OTEL_EXPORTER_OTLP_PROTOCOL=thrift" in log and "Traceback" not in log


def by_name(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_a_traced_server_exports_requests_handshakes_connects_and_a_send_from_arrival_to_ack(
    nursery: trio.Nursery, tmp_path: Path, protocol: str
) -> None:
    with running_sink() as sink:
        port = sink.grpc_port if protocol == "grpc" else sink.http_port
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_SERVICE_NAME": "minitalk-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        args = ["--database", f"sqlite:///{tmp_path / 't.db'}", "--bcrypt-rounds", "4", "--trace-messages", "1"]
        server = await start_server_process(nursery, args, env=env)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            tokens = await make_users(http, ["ann", "bob"])
            room = await make_room(http, tokens["ann"], ["bob"])
            assert (await http.get(f"/api/chatrooms/{room}/messages", headers=bearer(tokens["ann"]))).is_success
            polling = await http.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
            assert polling.status_code == 200
        async with raw_client(server.url, tokens["ann"]) as ann:
            await ann.emit("send_message", {"roomId": room, "content": "traced"}, ack_id=7)
            with trio.fail_after(10):
                while (event := await ann.next_event())[0] != "ack:7":
                    pass
            seq = event[1]["seq"]
        async with raw_client(server.url, "forged", connect=False) as bad:
            await bad.ws.send_message("40")
            assert (await bad.packet()).startswith("44")
        assert await server.terminate() == 0  # the last spans are exported at shutdown
        spans = sink.store.spans()

    assert spans and {s.protocol for s in spans} == {protocol}
    assert {s.service for s in spans} == {"minitalk-under-test"}
    # REST: one server span per request, named by the route template.
    [history] = by_name(spans, "GET /api/chatrooms/<room_id>/messages")
    assert history.attributes["http.response.status_code"] == 200 and history.parent_id == ""
    # Engine.IO handshakes: polling's is a child of its HTTP request; websocket's stands alone.
    handshakes = by_name(spans, "engine.io handshake")
    [polled] = [s for s in handshakes if s.attributes["engineio.transport"] == "polling"]
    [polling_request] = [s for s in spans if s.span_id == polled.parent_id]
    assert polling_request.name == "GET /socket.io/"
    assert len([s for s in handshakes if s.attributes["engineio.transport"] == "websocket"]) == 2
    # Socket.IO CONNECTs: ann's succeeded, the forged token's failed.
    connects = by_name(spans, "socket.io connect")
    assert {(s.attributes.get("enduser.id"), s.status_code) for s in connects} == {("ann", 0), (None, 2)}
    # The send: one trace from arrival to ack, its steps in order and inside it.
    [send] = by_name(spans, "send_message")
    assert send.attributes["chat.seq"] == seq and send.attributes["enduser.id"] == "ann"
    steps = sorted((s for s in spans if s.parent_id == send.span_id), key=lambda s: s.start_ns)
    assert [s.name for s in steps] == ["queue", "commit", "broadcast", "ack"], span_tree(spans, send)
    assert all(send.start_ns <= s.start_ns <= s.end_ns <= send.end_ns for s in steps), span_tree(spans, send)
    assert all(a.end_ns <= b.start_ns for a, b in itertools.pairwise(steps)), span_tree(spans, send)
    assert steps[1].attributes["chat.batch_size"] == 1
