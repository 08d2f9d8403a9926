"""The server's one configuration object, filled from CLI flags, then environment, then defaults.

Every tunable is a field of :class:`Config` with its unit and the reason for its default. The same text
is the ``--help`` of ``python -m server``, so the two never drift apart.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec

from server.logs import LogFormat
from storage.open import DEFAULT_DATABASE, is_postgres_url

DEFAULT_JWT_SECRET = "your-secret-key"  # the original server's default (contract §2); warned about at start

LogLevel = Literal["debug", "info", "warning", "error"]
DeliveryMode = Literal["durable", "fast"]
AdminRoutes = Literal["open", "token", "off"]
OnOff = Literal["on", "off"]


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 4000
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    database: str = DEFAULT_DATABASE
    jwt_secret: str = DEFAULT_JWT_SECRET
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    trace_messages: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.01
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1024 * 1024
    http_compression: Literal["on", "off"] = "on"
    http_compression_threshold: Annotated[int, msgspec.Meta(ge=0)] = 1024
    bcrypt_rounds: Annotated[int, msgspec.Meta(ge=4, le=31)] = 10
    bcrypt_batch_rounds: Annotated[int, msgspec.Meta(ge=4, le=31)] = 8
    hash_threads: Annotated[int, msgspec.Meta(ge=1)] = max(1, os.cpu_count() or 1)
    max_batch_items: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    max_participants: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    max_name_chars: Annotated[int, msgspec.Meta(ge=1)] = 256
    shutdown_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    delivery_mode: DeliveryMode = "durable"
    batch_max: Annotated[int, msgspec.Meta(ge=1)] = 2048
    batch_linger: Annotated[float, msgspec.Meta(ge=0)] = 0.002
    ingest_queue: Annotated[int, msgspec.Meta(ge=1)] = 16384
    outbox_max_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 4 * 1024 * 1024
    outbox_max_messages: Annotated[int, msgspec.Meta(ge=16)] = 10_000
    ping_interval: Annotated[float, msgspec.Meta(gt=0)] = 25.0
    ping_timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    connect_timeout: Annotated[float, msgspec.Meta(gt=0)] = 45.0
    max_packet_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1024 * 1024
    ws_compression: OnOff = "on"
    ws_compression_threshold: Annotated[int, msgspec.Meta(ge=0)] = 1024
    ws_compression_level: Annotated[int, msgspec.Meta(ge=1, le=9)] = 6
    max_content_chars: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 20_000
    catchup_high_water: Annotated[int, msgspec.Meta(ge=4096)] = 1024 * 1024
    catchup_page: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 500
    # Operator safety and storage failures (hard-ops).
    storage_outage_budget: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    cluster_check_interval: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    storage_retry_after: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 2
    admin_routes: AdminRoutes = "open"
    admin_token: str = ""
    login_attempts: Annotated[int, msgspec.Meta(ge=0)] = 10
    login_ip_attempts: Annotated[int, msgspec.Meta(ge=0)] = 100
    login_window: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    message_rate: Annotated[float, msgspec.Meta(ge=0)] = 2000.0
    message_burst: Annotated[int, msgspec.Meta(ge=1)] = 4000
    # Connection hardening (slow bodies, idle keep-alive, descriptors): one block, see OPTIONS for the reasons.
    body_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    keep_alive_timeout: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    max_connections_per_ip: Annotated[int, msgspec.Meta(ge=0)] = 20_000

    def __post_init__(self) -> None:
        if self.admin_routes == "token" and not self.admin_token:
            raise ValueError("admin_routes = token needs an admin token: set ADMIN_TOKEN (or --admin-token)")
        # A lagging member's queue holds up to the high-water mark plus a page (itself cut at the mark): the
        # hard bound must leave room for both, or catch-up would cut off the readers it exists to keep.
        if 2 * self.catchup_high_water + self.max_packet_bytes > self.outbox_max_bytes:
            raise ValueError(
                "outbox_max_bytes must be at least 2 x catchup_high_water + max_packet_bytes"
                f" ({2 * self.catchup_high_water + self.max_packet_bytes} with these settings)"
            )
        # Fast mode hands out seqs in memory before the commit, so one process must own each room's seq. With
        # PostgreSQL every process is a cluster member (a room's seq is assigned in the committing transaction,
        # whichever process commits), so two fast processes would give one seq to two messages.
        if self.delivery_mode == "fast" and self.cluster:
            raise ValueError(
                "delivery_mode = fast needs one process to own each room's seq, and with PostgreSQL every process"
                " is a cluster member: use --delivery-mode durable (or SQLite for fast mode)"
            )

    @property
    def cluster(self) -> bool:
        """Several processes may share this database (PostgreSQL): each is a cluster member."""
        return is_postgres_url(self.database)

    @property
    def uses_default_secret(self) -> bool:
        return self.jwt_secret == DEFAULT_JWT_SECRET


class Option(msgspec.Struct, frozen=True):
    """One CLI flag: the Config field it fills, its environment variable, and its help text."""

    field: str
    flag: str
    env: str | None
    help: str
    metavar: str


OPTIONS: tuple[Option, ...] = (
    Option("host", "--host", None, "address to listen on (default 127.0.0.1: loopback only)", "ADDR"),
    Option("port", "--port", "PORT", "TCP port for REST and Socket.IO (default 4000, as the original)", "PORT"),
    Option(
        "metrics_port",
        "--metrics-port",
        "METRICS_PORT",
        "serve GET /metrics on this port (on --host) instead of the chat port, which then answers it 404: publish"
        " the chat port, scrape this one from inside (default: unset, /metrics on the chat port)",
        "PORT",
    ),
    Option(
        "trace_messages",
        "--trace-messages",
        "TRACE_MESSAGES",
        "when tracing is on (OTEL_EXPORTER_OTLP_ENDPOINT, see the README), the share of send_message events traced"
        " from arrival to ack (default 0.01: one in a hundred, so a bombing does not become a span flood)",
        "RATIO",
    ),
    Option(
        "database",
        "--database",
        "DATABASE_URL",
        "storage URL: sqlite:///relative/path.db, sqlite:////absolute/path.db or postgresql://user:pass@host:port/db;"
        " engine options as query parameters, see the README (default {DEFAULT_DATABASE})",
        "URL",
    ),
    Option(
        "jwt_secret",
        "--jwt-secret",
        "JWT_SECRET",
        "HS256 signing secret for tokens; prefer the environment variable, which ps cannot show"
        f" (default {DEFAULT_JWT_SECRET!r}, as the original: change it in production)",
        "SECRET",
    ),
    Option("log_level", "--log-level", "LOG_LEVEL", "debug, info, warning or error (default info)", "LEVEL"),
    Option(
        "log_format",
        "--log-format",
        "LOG_FORMAT",
        "text (for a terminal) or json (one object per line, for a log pipeline) (default text)",
        "FORMAT",
    ),
    Option(
        "max_body_bytes",
        "--max-body-bytes",
        "MAX_BODY_BYTES",
        "largest accepted HTTP request body, in bytes (default 1048576 = 1 MiB; the original's 100 MB"
        " let one request hold 100 MB of memory)",
        "BYTES",
    ),
    Option(
        "http_compression",
        "--http-compression",
        "HTTP_COMPRESSION",
        "on: gzip REST responses, polling payloads and the web files for clients whose Accept-Encoding takes it"
        " (a 100-message history page shrinks 7-9 times); off: every response as it is (default on)",
        "on|off",
    ),
    Option(
        "http_compression_threshold",
        "--http-compression-threshold",
        "HTTP_COMPRESSION_THRESHOLD",
        "smallest HTTP response body gzipped, in bytes (default 1024: below it gzip's framing and the CPU cost"
        " more than the few hundred bytes saved)",
        "BYTES",
    ),
    Option(
        "bcrypt_rounds",
        "--bcrypt-rounds",
        "BCRYPT_ROUNDS",
        "bcrypt cost (log2 rounds) for single signups (default 10, as the original)",
        "COST",
    ),
    Option(
        "bcrypt_batch_rounds",
        "--bcrypt-batch-rounds",
        "BCRYPT_BATCH_ROUNDS",
        "bcrypt cost for signup-batch (default 8, as the original)",
        "COST",
    ),
    Option(
        "hash_threads",
        "--hash-threads",
        "HASH_THREADS",
        "threads that hash passwords off the event loop, in threads (default: one per CPU core)",
        "N",
    ),
    Option(
        "max_batch_items",
        "--max-batch-items",
        "MAX_BATCH_ITEMS",
        "most users or rooms in one batch request, in items (default 10000; the load test sends 200)",
        "N",
    ),
    Option(
        "max_participants",
        "--max-participants",
        "MAX_PARTICIPANTS",
        "most participants in one room, in users (default 10000)",
        "N",
    ),
    Option(
        "max_name_chars",
        "--max-name-chars",
        "MAX_NAME_CHARS",
        "longest username or room name, in characters (default 256)",
        "N",
    ),
    Option(
        "shutdown_timeout",
        "--shutdown-timeout",
        "SHUTDOWN_TIMEOUT",
        "seconds a graceful shutdown may take before open connections are cut (default 10)",
        "SECONDS",
    ),
    Option(
        "delivery_mode",
        "--delivery-mode",
        "DELIVERY_MODE",
        "durable: broadcast and ack a message only after its batch is committed, so everything anyone saw is"
        " stored; fast: broadcast at once, persist behind, ack after commit (default durable)",
        "MODE",
    ),
    Option("batch_max", "--batch-max", "BATCH_MAX", "most messages in one group commit (default 2048)", "N"),
    Option(
        "batch_linger",
        "--batch-linger",
        "BATCH_LINGER",
        "seconds a batch waits for more messages after its first (default 0.002): trades up to that much"
        " latency for fewer commits at moderate load",
        "SECONDS",
    ),
    Option(
        "ingest_queue",
        "--ingest-queue",
        "INGEST_QUEUE",
        "messages accepted but not yet committed, at most (default 16384); when full, senders wait: backpressure",
        "N",
    ),
    Option(
        "outbox_max_bytes",
        "--outbox-max-bytes",
        "OUTBOX_MAX_BYTES",
        "bytes queued to one client before it is disconnected as a slow consumer (default 4194304 = 4 MiB)",
        "BYTES",
    ),
    Option(
        "outbox_max_messages",
        "--outbox-max-messages",
        "OUTBOX_MAX_MESSAGES",
        "packets queued to one client before it is disconnected as a slow consumer (default 10000)",
        "N",
    ),
    Option(
        "ping_interval",
        "--ping-interval",
        "PING_INTERVAL",
        "seconds between server pings (default 25, as the original; keep below nginx's 60 s)",
        "SECONDS",
    ),
    Option(
        "ping_timeout",
        "--ping-timeout",
        "PING_TIMEOUT",
        "seconds to wait for a pong before dropping the client (default 60, as the original)",
        "SECONDS",
    ),
    Option(
        "connect_timeout",
        "--connect-timeout",
        "CONNECT_TIMEOUT",
        "seconds a session may stay without a Socket.IO CONNECT (default 45, as Socket.IO)",
        "SECONDS",
    ),
    Option(
        "max_packet_bytes",
        "--max-packet-bytes",
        "MAX_PACKET_BYTES",
        "largest websocket message or polling payload, in bytes, advertised as maxPayload (default 1048576;"
        " the original's 100 MB let one client hold 100 MB)",
        "BYTES",
    ),
    Option(
        "ws_compression",
        "--ws-compression",
        "WS_COMPRESSION",
        "on: answer a websocket client's permessage-deflate offer (RFC 7692; browsers, Node's ws and the websockets"
        " library make one), with no context takeover either way, so no connection keeps a zlib context while idle;"
        " off: answer without it, as the original (default on)",
        "on|off",
    ),
    Option(
        "ws_compression_threshold",
        "--ws-compression-threshold",
        "WS_COMPRESSION_THRESHOLD",
        "websocket messages larger than this, in bytes, are compressed for clients that agreed on permessage-deflate,"
        " once per broadcast whatever the room's size (default 1024: below it deflate's CPU and header cost more than"
        " they save; Node's ws picks the same; 0 = every message)",
        "BYTES",
    ),
    Option(
        "ws_compression_level",
        "--ws-compression-level",
        "WS_COMPRESSION_LEVEL",
        "zlib's level (1-9) for those messages (default 6, zlib's and Node's ws default: 4-8 KB of chat text 2.3x"
        " smaller for ~115 us of CPU a broadcast; 1 takes half the CPU for 2.1x, which a bombed server may prefer)",
        "1-9",
    ),
    Option(
        "max_content_chars",
        "--max-content-chars",
        "MAX_CONTENT_CHARS",
        "longest message content, in characters (default 10000)",
        "N",
    ),
    Option(
        "max_connections",
        "--max-connections",
        "MAX_CONNECTIONS",
        "most Engine.IO sessions at once, in sessions (default 20000)",
        "N",
    ),
    Option(
        "catchup_high_water",
        "--catchup-high-water",
        "CATCHUP_HIGH_WATER",
        "bytes queued to one client past which it stops getting live pushes and catches up from the log instead"
        " (default 1048576 = 1 MiB): bounds memory per slow reader, and how long a ping waits behind messages",
        "BYTES",
    ),
    Option(
        "catchup_page",
        "--catchup-page",
        "CATCHUP_PAGE",
        "messages read from the log per catch-up step (default 500; at most 1000, a history page)",
        "N",
    ),
    # Operator safety and storage failures (hard-ops).
    Option(
        "storage_outage_budget",
        "--storage-outage-budget",
        "STORAGE_OUTAGE_BUDGET",
        "seconds a durable-mode commit is retried while the database refuses for now (a restart, a lock, a full"
        " disk) before its senders are answered 'Failed to send message' (default 30: a database restart"
        " finishes well within it, and a sender waits for an answer no longer than that)",
        "SECONDS",
    ),
    Option(
        "storage_retry_after",
        "--storage-retry-after",
        "STORAGE_RETRY_AFTER",
        "seconds sent as Retry-After with a 503 while storage is failing (default 2: a lock or a full disk"
        " that clears is noticed soon, without a retry storm)",
        "SECONDS",
    ),
    Option(
        "cluster_check_interval",
        "--cluster-check-interval",
        "CLUSTER_CHECK_INTERVAL",
        "PostgreSQL: seconds between comparisons of the heads of rooms with local members against storage, the"
        " safety net for a missed NOTIFY (default 2: a lost wake-up costs at most that much latency)",
        "SECONDS",
    ),
    Option(
        "admin_routes",
        "--admin-routes",
        "ADMIN_ROUTES",
        "DELETE /api/auth/delete-all-users and /api/messages/delete-all: open (anyone, as the original: the"
        " admin panel uses them; warned about at start), token (Authorization: Bearer <admin token>), off (404)"
        " (default open)",
        "MODE",
    ),
    Option(
        "admin_token",
        "--admin-token",
        "ADMIN_TOKEN",
        "the token the admin routes require with --admin-routes token; prefer the environment variable,"
        " which ps cannot show (default: none)",
        "TOKEN",
    ),
    Option(
        "login_attempts",
        "--login-attempts",
        "LOGIN_ATTEMPTS",
        "failed logins per username per --login-window before 429, checked before bcrypt runs (default 10;"
        " 0 = no limit): a password guesser gets 10 guesses a minute, a user who mistypes is not locked out",
        "N",
    ),
    Option(
        "login_ip_attempts",
        "--login-ip-attempts",
        "LOGIN_IP_ATTEMPTS",
        "failed login requests per client IP per --login-window before 429 (default 100; 0 = no limit); a"
        " batch counts once. Behind a proxy every client has the proxy's IP: raise it or set 0",
        "N",
    ),
    Option(
        "login_window",
        "--login-window",
        "LOGIN_WINDOW",
        "seconds over which the login limits count, refilled continuously (default 60)",
        "SECONDS",
    ),
    Option(
        "message_rate",
        "--message-rate",
        "MESSAGE_RATE",
        "send_message events per second per connection (token bucket; over it: the error event, not stored;"
        " default 2000, 60 times the load test's fastest client; 0 = no limit)",
        "PER_SECOND",
    ),
    Option(
        "message_burst",
        "--message-burst",
        "MESSAGE_BURST",
        "send_message events one connection may send at once above the rate (default 4000: two seconds' worth)",
        "N",
    ),
    # Connection hardening (hard-http).
    Option(
        "body_timeout",
        "--body-timeout",
        "BODY_TIMEOUT",
        "seconds a request body may take to arrive after its head; later the client gets 408 and the connection"
        " closes (default 30, as the head timeout; the original had none, so a trickled body held a descriptor"
        " for ever)",
        "SECONDS",
    ),
    Option(
        "keep_alive_timeout",
        "--keep-alive-timeout",
        "KEEP_ALIVE_TIMEOUT",
        "seconds an idle keep-alive connection waits for its next request head, complete (default 20: longer"
        " than httpx's 5 s and aiohttp's 15 s pool expiry, so those clients drop an idle connection first; a"
        " server that closes first races the client's next request into a connection reset)",
        "SECONDS",
    ),
    Option(
        "max_connections_per_ip",
        "--max-connections-per-ip",
        "MAX_CONNECTIONS_PER_IP",
        "open TCP connections from one client address, in connections; past it a new one gets 503 and is closed"
        " (default 20000, as --max-connections: the load test and bench connect thousands from 127.0.0.1, and"
        " behind a proxy every client has one address; 0 = no limit)",
        "N",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="minitalk-trio: a drop-in MinitalkChat backend (REST + Socket.IO) on one Trio loop.",
        epilog="Each option can also be set by the environment variable shown; a flag wins over the environment.",
    )
    for opt in OPTIONS:
        env_note = f" [env {opt.env}]" if opt.env else ""
        parser.add_argument(opt.flag, dest=opt.field, metavar=opt.metavar, help=opt.help + env_note)
    return parser


class ConfigError(ValueError):
    """A flag or environment variable has a value the server cannot use; the message names it."""


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Config from CLI flags, then the environment, then the defaults; ConfigError names a bad value."""
    args = build_parser().parse_args(list(argv))
    raw: dict[str, Any] = {}
    for opt in OPTIONS:
        value = getattr(args, opt.field)
        if value is None and opt.env is not None:
            value = environ.get(opt.env)
        if value is not None:
            raw[opt.field] = value
    try:
        return msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
