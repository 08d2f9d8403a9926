"""Synchronous unit tests: tokens, REST validators (sans-IO, fuzzed), config loading, ids, passwords."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import bcrypt
import jwt
import pytest
import trio
import trio.lowlevel
from hypothesis import given
from hypothesis import strategies as st

import storage.ids
from protocol import rest
from protocol.rest import Limits, RequestError
from server.config import DEFAULT_JWT_SECRET, Config, ConfigError, build_parser, load_config
from server.passwords import PasswordHasher
from server.tokens import Tokens, bearer_token
from storage.ids import new_id
from storage.timefmt import parse_date_ms

LIMITS = Limits(max_batch_items=50, max_participants=20, max_name_chars=32)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
BODY_KEYS = st.sampled_from(["username", "password", "users", "name", "participants", "rooms", "confirmationCode"])
BODIES = JSON | st.dictionaries(BODY_KEYS, JSON, max_size=4)


# -- tokens ------------------------------------------------------------------------------------------
def _forge(payload: dict[str, Any], secret: str = "a-long-enough-secret-for-hs256-keys!", alg: str = "HS256") -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(payload, secret, algorithm=alg)


def test_tokens_round_trip_and_rejections() -> None:
    tokens = Tokens("a-long-enough-secret-for-hs256-keys!")
    assert tokens.username(tokens.issue("alice")) == "alice"
    now = int(time.time())
    assert tokens.username(_forge({"username": "bob"})) == "bob", "no exp is accepted, as jsonwebtoken does"
    assert tokens.username(_forge({"username": "bob", "iat": now + 999})) == "bob", "a future iat is accepted"
    hs512 = _forge({"username": "c"}, alg="HS512")
    assert tokens.username(hs512) == "c"
    assert tokens.username(_forge({"username": "d", "exp": now - 1})) is None, "expired"
    assert tokens.username(_forge({"username": "e"}, secret="some-other-secret-that-is-also-long")) is None
    assert tokens.username(jwt.encode({"username": "f"}, None, algorithm="none")) is None, "alg none is refused"
    assert tokens.username(_forge({"user": "g"})) is None, "no username claim"
    assert tokens.username("not.a.jwt") is None


def test_short_default_secret_does_not_warn_per_token() -> None:
    tokens = Tokens(DEFAULT_JWT_SECRET)
    assert tokens.short_secret
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tokens.username(tokens.issue("alice")) == "alice"


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer abc", "abc"),
        ("Token abc", "abc"),
        ("abc", None),
        ("Bearer  abc", None),
        ("Bearer abc extra", "abc"),
    ],
)
def test_bearer_token_parsing_matches_the_original(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


# -- REST validators ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [None, False, 0, 0.0, ""])
def test_js_falsy(value: Any) -> None:
    assert rest.js_falsy(value)


@pytest.mark.parametrize("value", [True, 1, -1, "0", " ", [], {}, "false"])
def test_js_truthy(value: Any) -> None:
    assert not rest.js_falsy(value)


def test_room_spec_and_limits() -> None:
    assert rest.room_spec({"name": "r"}, LIMITS) == ("r", [])
    assert rest.room_spec({"name": "r", "participants": ["a", "b"]}, LIMITS) == ("r", ["a", "b"])
    with pytest.raises(RequestError, match="at most 20 participants"):
        rest.room_spec({"name": "r", "participants": [f"u{i}" for i in range(21)]}, LIMITS)
    with pytest.raises(RequestError, match="At most 50 users per batch request"):
        rest.credential_list({"users": [{"username": "a", "password": "p"}] * 51}, LIMITS)


def test_history_params() -> None:
    assert rest.history_params({}) == rest.HistoryParams()
    assert rest.history_params({"limit": "7", "after_seq": "0", "since": "x"}) == rest.HistoryParams(7, 0, None, "x")
    for bad in ({"limit": "٣"}, {"limit": ""}, {"before_seq": "1e3"}):
        with pytest.raises(RequestError):
            rest.history_params(bad)


@given(body=BODIES)
def test_fuzz_validators_raise_only_request_errors(body: Any) -> None:
    """Any JSON body gets a value or a RequestError with a 4xx status: never another exception."""
    validators: list[Callable[[Any], object]] = [
        partial(rest.credentials, limits=LIMITS),
        partial(rest.credential_list, limits=LIMITS),
        partial(rest.room_spec, limits=LIMITS),
        partial(rest.room_specs, limits=LIMITS),
        partial(rest.invitees, limits=LIMITS),
        partial(rest.confirmation, expected="CODE"),
    ]
    for validate in validators:
        try:
            validate(body)
        except RequestError as exc:
            assert 400 <= exc.status < 500 and exc.message


_PARAM_TEXT = st.text(max_size=8) | st.integers(min_value=-(2**80), max_value=2**80).map(str) | st.text("0123456789")


@given(query=st.dictionaries(st.sampled_from(["limit", "after_seq", "before_seq", "since"]), _PARAM_TEXT))
def test_fuzz_history_params(query: dict[str, str]) -> None:
    try:
        params = rest.history_params(query)
    except RequestError as exc:
        assert exc.status == 400
    else:
        assert 1 <= params.limit <= rest.HISTORY_MAX_LIMIT
        for seq in (params.after_seq, params.before_seq):
            assert seq is None or 0 <= seq <= rest.MAX_SEQ
        if params.since is not None:
            parse_date_ms(params.since)  # never raises: None or an integer


# -- config ------------------------------------------------------------------------------------------
def test_config_defaults_env_and_flags() -> None:
    assert load_config([], {}) == Config()
    assert Config().port == 4000 and Config().host == "127.0.0.1" and Config().uses_default_secret
    config = load_config(["--port", "5000"], {"PORT": "6000", "DATABASE_URL": "sqlite:///x.db", "JWT_SECRET": "s"})
    assert (config.port, config.database, config.jwt_secret) == (5000, "sqlite:///x.db", "s")
    assert load_config([], {"PORT": "6000"}).port == 6000
    assert load_config([], {"WS_COMPRESSION_LEVEL": "1"}).ws_compression_level == 1
    assert load_config(["--ws-compression-level", "9"], {}).ws_compression_level == 9
    assert load_config([], {"HOST": "example.org"}).host == "127.0.0.1", "HOST from the shell is ignored"


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "70000"],
        ["--port", "abc"],
        ["--log-level", "loud"],
        ["--bcrypt-rounds", "2"],
        ["--max-body-bytes", "0"],
        ["--ws-compression-level", "0"],
        ["--ws-compression-level", "10"],
    ],
)
def test_config_rejects_bad_values(argv: list[str]) -> None:
    with pytest.raises(ConfigError, match="invalid configuration"):
        load_config(argv, {})


def test_every_config_field_has_a_documented_flag() -> None:
    help_text = build_parser().format_help()
    for field in Config.__struct_fields__:
        assert "--" + field.replace("_", "-") in help_text


# -- ids, dates, passwords ---------------------------------------------------------------------------
def test_ids_look_like_the_originals_and_do_not_repeat() -> None:
    ids = {new_id(1750748195822) for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(i.startswith("1750748195822") and len(i) == 22 for i in ids)


class _FixedBits:
    def __init__(self, n: int) -> None:
        self.n = n

    def getrandbits(self, bits: int) -> int:
        assert bits == 46
        return self.n


@pytest.mark.parametrize("n", [0, 1, 35, 36, 46655, 46656, 36**6 - 1, 36**6, 2**46 - 1, 0x2B3C4D5E6F7A])
def test_id_random_part_is_the_46_bits_in_base_36_least_significant_digit_first(
    n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage.ids, "_rng", _FixedBits(n))
    expected, rest = "", n
    for _ in range(9):
        rest, digit = divmod(rest, 36)
        expected += "0123456789abcdefghijklmnopqrstuvwxyz"[digit]
    assert new_id(1750748195822) == "1750748195822" + expected


def test_parse_date() -> None:
    assert parse_date_ms("2025-06-24T07:02:14.663Z") == 1750748534663
    assert parse_date_ms("2025-06-24") == 1750723200000
    assert parse_date_ms("yesterday") is None
    # The extremes that ``since`` can name: exact integers, whatever the offset.
    assert parse_date_ms("0001-01-01T00:00:00+01:00") == -62135600400000
    assert parse_date_ms("9999-12-31T23:59:59.999-23:59") == 253402387139999
    assert parse_date_ms("1969-12-31T23:59:59.9995Z") == -1, "floor to the millisecond, as JavaScript's Date"


def test_history_seq_bounds() -> None:
    assert rest.history_params({"after_seq": str(rest.MAX_SEQ)}).after_seq == rest.MAX_SEQ
    assert rest.history_params({"before_seq": " 0 "}).before_seq == 0
    for bad in (str(rest.MAX_SEQ + 1), str(2**70), "9" * 400, "1" * 5000, "+1", "0x10"):
        with pytest.raises(RequestError, match="must be an integer from 0 to 9007199254740991"):
            rest.history_params({"after_seq": bad})


async def test_hasher_reads_bcryptjs_2a_hashes_and_rejects_non_bcrypt() -> None:
    hasher = PasswordHasher(rounds=4, batch_rounds=4, threads=2)
    hashed = await hasher.hash("secret")
    assert await hasher.check("secret", "$2a$" + hashed[4:]), "bcryptjs writes $2a$"
    assert not await hasher.check("secret", "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8")
    batch = await hasher.hash_batch([f"p{i}" for i in range(7)])
    assert len(batch) == 7 and len({h[:29] for h in batch}) == 1
    verdicts = await hasher.check_batch([(f"p{i}", h) for i, h in enumerate(batch)] + [("wrong", batch[0])])
    assert verdicts == [True] * 7 + [False]
    assert bcrypt.checkpw(b"p3", batch[3].encode())


async def test_hashing_does_not_block_the_event_loop() -> None:
    """While a cost-12 hash runs (hundreds of ms), the loop keeps ticking: it is off the loop thread."""
    hasher = PasswordHasher(rounds=12, batch_rounds=12, threads=1)
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await hasher.hash("secret")
        done = True
    assert ticks > 10
