"""The sans-IO Engine.IO session machine, synchronously: states, polling answers, heartbeat arithmetic."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.engineio_session import Beat, EngineIOSession, Poll, SessionStateError, State, Upgrade

INTERVAL, TIMEOUT, CONNECT = 0.3, 0.2, 1.0  # the engine.io-protocol test suite's server settings


def machine(*, websocket: bool = False) -> EngineIOSession:
    return EngineIOSession(
        now=0.0, ping_interval=INTERVAL, ping_timeout=TIMEOUT, connect_timeout=CONNECT, websocket=websocket
    )


def test_first_ping_is_due_one_interval_after_open_and_the_timeout_one_ping_timeout_after_it() -> None:
    m = machine()
    assert m.next_deadline() == INTERVAL
    assert m.tick(0.29, connected=True) is Beat.NOTHING
    assert m.tick(0.3, connected=True) is Beat.PING
    assert m.next_deadline() == pytest.approx(0.5)  # 0.3 + pingTimeout 0.2
    assert m.tick(0.49, connected=True) is Beat.NOTHING
    assert m.tick(0.5, connected=True) is Beat.CLOSED
    assert m.state is State.CLOSED and m.close_reason == "ping timeout"


def test_three_pings_fit_before_the_connect_timeout() -> None:
    # Deviation 5: pings at 0.3, 0.6, 0.9 (each pong at once), the connect timeout at 1.0 after the open.
    m = machine()
    for n in (1, 2, 3):
        now = m.next_deadline()
        assert now == pytest.approx(0.3 * n)
        assert m.tick(now, connected=False) is Beat.PING
        m.pong(now)
    assert m.next_deadline() == CONNECT
    assert m.tick(CONNECT, connected=False) is Beat.CLOSED
    assert m.close_reason == "no Socket.IO CONNECT in time"


def test_a_connect_ends_the_connect_timer() -> None:
    m = machine()
    m.tick(0.1, connected=True)
    for _ in range(10):
        now = m.next_deadline()
        assert m.tick(now, connected=True) is Beat.PING
        m.pong(now)
    assert not m.closed


def test_polling_answers() -> None:
    m = machine()
    assert m.poll_begin(queued=True) is Poll.SERVE
    assert m.poll_begin(queued=False) is Poll.WAIT
    assert m.poll_woken(queued=False) is Poll.WAIT
    assert m.poll_begin(queued=False) is Poll.TWO_POLLS and m.closed
    assert m.poll_begin(queued=False) is Poll.GONE


def test_a_waiting_poll_gets_a_noop_when_the_client_closes_and_a_close_when_the_server_does() -> None:
    by_client, by_server = machine(), machine()
    for m, client in ((by_client, True), (by_server, False)):
        assert m.poll_begin(queued=False) is Poll.WAIT
        m.close("bye", by_client=client)
    assert by_client.poll_woken(queued=False) is Poll.NOOP
    assert by_server.poll_woken(queued=False) is Poll.CLOSE


def test_upgrade_releases_polls_with_noops_and_ends_on_websocket() -> None:
    m = machine()
    assert m.poll_begin(queued=False) is Poll.WAIT
    assert m.websocket_opened() and m.state is State.PROBING
    assert not m.websocket_opened(), "a second websocket is accepted and closed"
    assert m.upgrade_packet("2probe") is Upgrade.PROBED
    assert m.poll_woken(queued=False) is Poll.NOOP
    m.poll_end()
    assert m.poll_begin(queued=False) is Poll.NOOP, "a later poll is released at once"


def test_upgrade_completes_with_a_waiting_poll_released_by_a_noop() -> None:
    m = machine()
    m.websocket_opened()
    m.upgrade_packet("2probe")
    m.poll_pending = True  # a GET that arrived just before the 5 and has not been answered yet
    assert m.upgrade_packet("5") is Upgrade.UPGRADED and m.state is State.WEBSOCKET
    assert m.poll_woken(queued=False) is Poll.NOOP
    m.poll_end()
    assert m.poll_begin(queued=False) is Poll.WRONG_TRANSPORT
    assert not m.websocket_opened()


def test_a_failed_probe_leaves_the_session_on_polling() -> None:
    m = machine()
    m.websocket_opened()
    assert m.upgrade_packet("4hello") is Upgrade.FAILED and m.state is State.POLLING
    m.websocket_opened()
    m.upgrade_packet("2probe")
    m.websocket_closed(upgraded=False)
    assert m.state is State.POLLING
    assert m.upgrade_packet("5") is Upgrade.FAILED


def test_poll_woken_without_a_waiting_poll_is_a_state_error() -> None:
    with pytest.raises(SessionStateError):
        machine().poll_woken(queued=False)


INPUTS = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.floats(0, 5), st.booleans()),
        st.tuples(st.just("pong"), st.floats(0, 5), st.booleans()),
        st.tuples(st.just("poll"), st.booleans(), st.booleans()),
        st.tuples(st.just("woken"), st.booleans(), st.booleans()),
        st.tuples(st.just("end"), st.booleans(), st.booleans()),
        st.tuples(st.just("ws"), st.booleans(), st.booleans()),
        st.tuples(st.just("packet"), st.sampled_from(["2probe", "5", "2", "4x", ""]), st.booleans()),
        st.tuples(st.just("wsclosed"), st.booleans(), st.booleans()),
        st.tuples(st.just("close"), st.booleans(), st.booleans()),
    ),
    max_size=40,
)


@given(websocket=st.booleans(), inputs=INPUTS)
def test_random_inputs_raise_only_state_errors_and_closed_is_final(
    websocket: bool, inputs: list[tuple[str, object, bool]]
) -> None:
    m = machine(websocket=websocket)
    for name, arg, flag in inputs:
        was_closed = m.closed
        try:
            if name == "tick":
                assert isinstance(arg, float)
                m.tick(arg, connected=flag)
            elif name == "pong":
                assert isinstance(arg, float)
                m.pong(arg)
            elif name == "poll":
                m.poll_begin(queued=flag)
            elif name == "woken":
                m.poll_woken(queued=flag)
            elif name == "end":
                m.poll_end()
            elif name == "ws":
                m.websocket_opened()
            elif name == "packet":
                assert isinstance(arg, str)
                m.upgrade_packet(arg)
            elif name == "wsclosed":
                m.websocket_closed(upgraded=flag)
            else:
                m.close("test", by_client=flag)
        except SessionStateError:
            pass
        assert m.closed == (m.state is State.CLOSED)
        if was_closed:
            assert m.state is State.CLOSED and m.next_deadline() == math.inf
