"""protocol.content_coding: Accept-Encoding negotiation and the compressibility rules, sans-IO (no server)."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.content_coding import (
    CODECS,
    GZIP,
    IDENTITY,
    STATIC_LEVEL,
    add_vary,
    choose_coding,
    gzip_compress,
    is_compressible,
    parse_accept_encoding,
)

BOTH = ("br", "gzip")  # a server that has two codings, brotli preferred: the tie-break is observable


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        (None, IDENTITY),  # no header: the client did not ask, it may not decode
        ("", IDENTITY),  # empty: only identity (RFC 9110 §12.5.3)
        ("gzip", GZIP),
        ("gzip, deflate", GZIP),  # python-engineio's requests, httpx
        ("gzip, deflate, br, zstd", GZIP),  # Chromium
        ("GZip", GZIP),
        ("x-gzip", GZIP),
        ("  gzip  ;  q=0.5 ", GZIP),
        ("gzip;Q=0.5", GZIP),
        ("identity", IDENTITY),
        ("deflate", IDENTITY),
        ("br", IDENTITY),  # we have no brotli
        ("gzip;q=0", IDENTITY),
        ("gzip;q=0.000", IDENTITY),
        ("gzip;q=0, *", IDENTITY),  # * covers identity, not the refused gzip
        ("*", GZIP),
        ("*;q=0.5", GZIP),  # gzip and identity tie at 0.5: the server prefers compressing
        ("*;q=0", None),  # nothing acceptable: identity is refused too
        ("identity;q=0", None),
        ("identity;q=0, gzip", GZIP),
        ("identity;q=0, *;q=0.1", GZIP),
        ("identity, gzip;q=0.5", IDENTITY),  # identity's q=1 beats gzip's 0.5
        ("gzip;q=0.001", GZIP),  # any listed q > 0 beats an unlisted identity
        ("identity;q=0.001, gzip;q=0.001", GZIP),
        ("gzip;q=0.5, identity;q=0.6", IDENTITY),
        ("gzip;q=1.0", GZIP),
        ("gzip;q=1.000", GZIP),
        ("gzip,,", GZIP),  # empty list elements are allowed
        (",gzip", GZIP),
        ("gzip;level=3", GZIP),  # an unknown parameter is ignored, the coding kept
        ("gzip;q=2", IDENTITY),  # malformed q: the entry is skipped
        ("gzip;q=0.0001", IDENTITY),
        ("gzip;q=-1", IDENTITY),
        ("gzip;q=", IDENTITY),
        ("gzip;q", IDENTITY),
        ("gzip;q=abc", IDENTITY),
        ("gz ip", IDENTITY),  # not a token
        ("gzip;q=0, gzip", GZIP),  # listed twice: the highest q counts
        ("x-gzip;q=0.4, gzip;q=0", GZIP),
    ],
)
def test_choose_coding(header: str | None, chosen: str | None) -> None:
    assert choose_coding(header) == chosen


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        ("gzip, br", "br"),  # equal q: the server's preference
        ("br, gzip", "br"),  # the client's order does not matter, only its q-values
        ("br;q=0.9, gzip", "gzip"),  # the client's q first
        ("br;q=0, *", "gzip"),
        ("*", "br"),
        ("gzip", "gzip"),
        ("BR;q=0.3, GZIP;q=0.2, identity;q=0.1", "br"),
    ],
)
def test_choose_among_several_codings(header: str, chosen: str) -> None:
    assert choose_coding(header, BOTH) == chosen


def test_parse_keeps_q_in_thousandths() -> None:
    assert parse_accept_encoding("gzip;q=0.5, BR;q=0.25, *;q=0, identity, x-gzip;q=0.125") == {
        "gzip": 500,
        "br": 250,
        "*": 0,
        "identity": 1000,
    }


# -- properties ---------------------------------------------------------------------------------------
CODING = st.sampled_from(["gzip", "GZIP", "x-gzip", "br", "deflate", "identity", "Identity", "*", "zstd"])
QVALUE = st.sampled_from(["0", "0.0", "0.001", "0.5", "0.999", "1", "1.0", "1.000"])
ELEMENT = st.builds(
    lambda coding, q, pad: f"{pad}{coding}{pad}" + (f";{pad}q={q}" if q is not None else ""),
    CODING,
    st.none() | QVALUE,
    st.sampled_from(["", " ", "\t"]),
)
WELL_FORMED = st.lists(ELEMENT, max_size=6).map(",".join)


def model_q(header: str, coding: str) -> float | None:
    """An independent reading of RFC 9110 §12.5.3 for well-formed headers: the q of ``coding``, None if unlisted."""
    found: list[float] = []
    star: list[float] = []
    for element in filter(None, (e.strip() for e in header.split(","))):
        name, _, q = element.partition(";")
        weight = float(q.strip()[2:]) if q else 1.0
        name = name.strip().lower().replace("x-gzip", "gzip")
        if name == coding:
            found.append(weight)
        elif name == "*":
            star.append(weight)
    if found:
        return max(found)
    return max(star) if star else None


@given(WELL_FORMED)
def test_choice_agrees_with_a_model_of_the_rfc(header: str) -> None:
    gzip_q = model_q(header, "gzip") or 0.0
    identity_q = model_q(header, "identity")
    chosen = choose_coding(header)
    if gzip_q > 0 and (identity_q is None or gzip_q >= identity_q):
        assert chosen == GZIP
    elif identity_q is None or identity_q > 0:
        assert chosen == IDENTITY
    else:
        assert chosen is None


@given(st.text(max_size=200))
def test_any_header_text_gives_an_answer_never_an_exception(header: str) -> None:
    assert choose_coding(header, BOTH) in {"br", "gzip", IDENTITY, None}
    assert all(0 <= q <= 1000 for q in parse_accept_encoding(header).values())


@given(st.binary(max_size=4096))
def test_gzip_round_trips_and_is_deterministic(body: bytes) -> None:
    encoded = gzip_compress(body, STATIC_LEVEL)
    assert gzip.decompress(encoded) == body
    assert encoded == gzip_compress(body, STATIC_LEVEL)  # mtime 0: a static file's gzip ETag is stable
    assert set(CODECS) == {GZIP}


@pytest.mark.parametrize(
    ("content_type", "compressible"),
    [
        ("application/json; charset=utf-8", True),
        ("text/plain; charset=UTF-8", True),  # polling payloads
        ("text/html", True),
        ("text/javascript; charset=utf-8", True),
        ("text/plain; version=0.0.4; charset=utf-8", True),  # /metrics
        ("text/event-stream; charset=utf-8", True),  # the type compresses; the hook skips it for being streamed
        ("application/problem+json", True),
        ("image/svg+xml", True),
        ("Application/JSON", True),
        ("image/png", False),
        ("image/x-icon", False),
        ("application/octet-stream", False),
        ("", False),
        (None, False),
    ],
)
def test_is_compressible(content_type: str | None, compressible: bool) -> None:
    assert is_compressible(content_type) is compressible


@pytest.mark.parametrize(
    ("vary", "result"),
    [
        (None, "Accept-Encoding"),
        ("", "Accept-Encoding"),
        ("Access-Control-Request-Headers", "Access-Control-Request-Headers, Accept-Encoding"),
        ("accept-encoding", "accept-encoding"),
        ("Origin, Accept-Encoding", "Origin, Accept-Encoding"),
        ("*", "*"),
    ],
)
def test_add_vary_once(vary: str | None, result: str) -> None:
    assert add_vary(vary) == result
