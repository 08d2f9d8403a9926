"""The whole server as one service, with every part's lifetime nested in the order it must stop.

    storage            opens first (schema migrated), closes last
    └── batcher        drains every accepted message into storage before storage closes
        └── hub        sessions, heartbeat, the flusher, the app's lifespan
            └── front door and its connections (REST, polling, websocket)

Start: storage, registry load, batcher, hub, then the listener binds, so nothing is served before the
data is ready. Stop (``request_shutdown``): stop accepting, close every session (websockets get a close
frame, waiting polls get ``1``), let HTTP requests finish within ``shutdown_timeout``, then the batcher
commits what was accepted, then storage closes.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Mapping

import hypercorn.config
import msgspec
import trio

from protocol.ratelimit import LoginGuard
from protocol.rest import Limits
from server.alerting import Alerting
from server.chat import ChatApp, Ticket
from server.cluster import ClusterFollower
from server.config import Config
from server.dashboard import dashboard_routes
from server.frontdoor import MAX_HEAD_BYTES, FrontDoor
from server.health import Health, ReportingStorage
from server.http_app import create_app
from server.http_compression import HttpCompression
from server.http_handoff import HttpHandoff
from server.hub import EngineApp, Hub, HubSettings
from server.metrics import Metrics
from server.metrics_port import MetricsPort
from server.passwords import PasswordHasher
from server.polling import polling_routes
from server.rooms import RoomRegistry
from server.routes_web import web_routes
from server.send_limit import SendRateLimit
from server.services import Services
from server.tokens import Tokens
from server.tracing import OFF, Tracing
from server.ws_endpoint import WebSocketEndpoint
from storage.batcher import WriteBehindBatcher
from storage.engine import StorageEngine
from storage.open import open_storage

log = logging.getLogger(__name__)


def _hypercorn_config(config: Config) -> hypercorn.config.Config:
    hc = hypercorn.config.Config()
    hc.graceful_timeout = config.shutdown_timeout
    hc.accesslog = None  # an access log line per request would cost more than the request under load
    hc.include_server_header = False
    hc.errorlog = logging.getLogger("hypercorn.error")  # through our handlers, not a second stream
    # Later requests on a keep-alive connection are read by hypercorn, not the front door. Its keep-alive
    # timer runs from the end of one response until the next request head is complete, so it bounds both an
    # idle connection and a trickled head; the head's size limit is the front door's. Its read_timeout stays
    # off: it would also cut a long-poll whose client is quietly waiting for the answer. The body is bounded
    # by server.body_guard.
    hc.keep_alive_timeout = config.keep_alive_timeout
    hc.h11_max_incomplete_size = MAX_HEAD_BYTES
    return hc


def hub_settings(config: Config) -> HubSettings:
    return HubSettings(
        mode=config.delivery_mode,
        ping_interval=config.ping_interval,
        ping_timeout=config.ping_timeout,
        connect_timeout=config.connect_timeout,
        max_packet_bytes=config.max_packet_bytes,
        max_content_chars=config.max_content_chars,
        outbox_max_bytes=config.outbox_max_bytes,
        outbox_max_messages=config.outbox_max_messages,
        max_connections=config.max_connections,
        catchup_high_water=config.catchup_high_water,
        catchup_page=config.catchup_page,
        cluster=config.cluster,
        ws_compression=config.ws_compression == "on",
        ws_compression_threshold=config.ws_compression_threshold,
        ws_compression_level=config.ws_compression_level,
    )


class MinitalkServer:
    def __init__(
        self,
        config: Config,
        *,
        storage: StorageEngine | None = None,
        engine_apps: Mapping[str, EngineApp] | None = None,
        tracing: Tracing = OFF,
        freeze_gc: bool = False,
    ) -> None:
        """``engine_apps``: more paths (``/engine.io/``) served as Engine.IO only, each by its own hub."""
        self.config = config
        self.storage = storage or open_storage(config.database)
        # Readiness has one owner; REST's storage calls (the registry's included) report to it.
        self.health = Health()
        rest_storage = ReportingStorage(self.storage, self.health)
        self.registry = RoomRegistry(rest_storage)
        tokens = Tokens(config.jwt_secret)
        self.metrics = Metrics()
        self.tracing = tracing
        # python -m server freezes what exists once it listens; not for a server inside a test process, whose
        # own garbage would be frozen with it (it would never be freed).
        self.freeze_gc = freeze_gc
        self.hub = Hub(hub_settings(config), self.registry, self.metrics, self.storage)
        self.hub.tracing = tracing
        self.chat = ChatApp(self.hub, self.registry, tokens, self.storage)
        self.hub.mount("/", self.chat)
        self.batcher: WriteBehindBatcher[Ticket] = WriteBehindBatcher(
            self.storage,
            self.chat,
            max_batch=config.batch_max,
            linger=config.batch_linger,
            queue_size=config.ingest_queue,
            # Fast mode: members saw a message before it was stored, so it is retried until it is.
            retry_until_stored=config.delivery_mode == "fast",
            outage_budget=config.storage_outage_budget,
            observer=self.metrics,
            health=self.health,
        )
        self.chat.batcher = self.batcher
        # With PostgreSQL every process is a cluster member: what the others commit and change reaches this one.
        self.follower = (
            ClusterFollower(
                self.storage,
                self.registry,
                self.hub.delivery,
                check_interval=config.cluster_check_interval,
                page=config.catchup_page,
            )
            if config.cluster
            else None
        )
        if self.follower is not None:
            self.chat.refresh_room = self.follower.refresh
        if config.message_rate > 0:
            self.chat.send_limit = SendRateLimit(
                config.message_rate, config.message_burst, self.metrics.rate_limits_hit.labels("message")
            )
        self.metrics.bind(self.hub.statistics, self.batcher.queue_depth, config.ingest_queue, lambda: self.health.ready)
        limits = Limits(config.max_batch_items, config.max_participants, config.max_name_chars)
        hasher = PasswordHasher(
            rounds=config.bcrypt_rounds, batch_rounds=config.bcrypt_batch_rounds, threads=config.hash_threads
        )
        services = Services(
            rest_storage,
            self.registry,
            tokens,
            hasher,
            limits,
            config.max_body_bytes,
            self.health,
            LoginGuard(config.login_attempts, config.login_ip_attempts, config.login_window),
            storage_retry_after=config.storage_retry_after,
            admin_routes=config.admin_routes,
            admin_token=config.admin_token,
            metrics=self.metrics,
            tracing=tracing,
        )
        # Engine.IO-only hubs: the same settings, no Socket.IO CONNECT awaited.
        engine_settings = msgspec.structs.replace(self.hub.settings, connect_timeout=math.inf)
        self.engine_hubs: dict[str, Hub] = {}
        for path, engine_app in (engine_apps or {}).items():
            engine_hub = Hub(engine_settings, self.registry, Metrics(), self.storage)
            engine_hub.mount_engine(engine_app)
            self.engine_hubs[path] = engine_hub
        # With a metrics port, /metrics is served there only (the chat port is the public one).
        self.metrics_port = (
            MetricsPort(self.metrics.render, config.host, config.metrics_port)
            if config.metrics_port is not None
            else None
        )
        extra = [polling_routes(self.hub, None if self.metrics_port else self.metrics)]
        extra += [polling_routes(hub, None, path=path) for path, hub in self.engine_hubs.items()]
        # The chat at / and the dashboard at /dashboard (static files and a metrics stream: never the hot path).
        # The dashboard shows what /metrics shows: with a metrics port, not on the public port either.
        dashboard = self.metrics_port is None
        compression = HttpCompression(config.http_compression_threshold) if config.http_compression == "on" else None
        extra.append(web_routes(dashboard=dashboard, compression=compression))
        # The alert rules of deploy/prometheus/alerts.yml, evaluated here for the dashboard's alerts panel.
        self.alerting = Alerting(self.metrics.registry)
        if dashboard:
            extra.append(dashboard_routes(self.metrics.registry, self.health.stopping, alerts=self.alerting.firing))
        app = create_app(services, extra=extra)
        if compression is not None:
            compression.install(app)
        self.http = HttpHandoff(
            app,
            _hypercorn_config(config),
            body_timeout=config.body_timeout,
            drain_limit=config.max_body_bytes,
            on_body_timeout=self.metrics.http_body_timeouts.inc,
        )
        self.front_door = FrontDoor(
            self.http,
            WebSocketEndpoint(self.hub),
            metrics=self.metrics,
            max_per_ip=config.max_connections_per_ip,
            on_error=lambda exc: self.hub.connection_failed(None, exc, "connection"),
            more_websockets={path: WebSocketEndpoint(hub) for path, hub in self.engine_hubs.items()},
        )
        self._shutdown = trio.Event()
        self.metrics_port_bound: int | None = None  # the port --metrics-port listens on (0 picks one)

    @property
    def shutdown_requested(self) -> bool:
        return self._shutdown.is_set()

    def request_shutdown(self) -> None:
        """Begin a graceful stop; ``run`` returns when it is complete."""
        self.health.shutting_down()
        self._shutdown.set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``request_shutdown`` (or cancellation); reports the bound TCP port once listening."""
        storage_stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(self._run_storage, storage_stop)
            try:
                await self.registry.load()
                self.hub.delivery.watermark = await self.storage.log_head()
                fast = self.config.delivery_mode == "fast"
                if fast:
                    await self._begin_fast_run()
                async with trio.open_nursery() as batcher_scope:
                    await batcher_scope.start(self.batcher.run)
                    try:
                        await self._serve(task_status)
                    finally:
                        self.batcher.begin_shutdown(trio.current_time() + self.config.shutdown_timeout)
                        batcher_scope.cancel_scope.cancel()  # drains, shielded, before returning
                log.info("all accepted messages committed (%d this run)", self.batcher.committed_messages)
                if fast and self.batcher.failed_messages == 0:
                    with trio.CancelScope(shield=True):
                        await self.storage.end_fast_run()
            finally:
                storage_stop.set()

    async def _begin_fast_run(self) -> None:
        """Fast mode hands out seqs before storing: note the bound durably, and load the idempotency window."""
        # Everything broadcast and not stored holds an ingest-queue slot, so at most ingest_queue seqs per
        # room can be in use and unstored when the process dies: that is the skip after an unclean stop.
        await self.storage.begin_fast_run(self.config.ingest_queue)
        self.chat.remember_stored(await self.storage.recent_idempotent_sends(self.hub.settings.recent_ids // 2))

    async def _run_storage(self, stop: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
        """Storage, shielded: a cancellation from outside must not close it while the batcher still drains.

        It closes when ``stop`` is set, which ``run`` does only after the batcher has finished.
        """
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                await nursery.start(self.storage.run)
                task_status.started()
                await stop.wait()
                nursery.cancel_scope.cancel()

    async def _settle_accepted(self) -> None:
        """Stop taking messages, commit what was accepted, deliver its acks and broadcasts: then sessions close.

        Within the shutdown deadline: a client that does not read its socket cannot hold the stop.
        """
        self.chat.stop_accepting()
        deadline = trio.current_time() + self.config.shutdown_timeout
        self.batcher.begin_shutdown(deadline)  # one deadline: a failing commit is not retried past it
        with trio.move_on_at(deadline) as committing:
            await self.batcher.wait_idle()
        if committing.cancelled_caught:
            log.warning("shutdown deadline reached with %d messages not committed", self.batcher.queue_depth())
        with trio.move_on_at(deadline):  # a client that does not read holds the stop until the deadline only
            await self.hub.wait_flushed()

    async def _serve(self, task_status: trio.TaskStatus[int]) -> None:
        async with trio.open_nursery() as hub_scope:
            await hub_scope.start(self.hub.run)
            for engine_hub in self.engine_hubs.values():
                await hub_scope.start(engine_hub.run)
            if self.follower is not None:
                await hub_scope.start(self.follower.run)
            await hub_scope.start(self.http.run)
            await hub_scope.start(self.alerting.run)
            if self.metrics_port is not None:
                self.metrics_port_bound = await hub_scope.start(self.metrics_port.run)
            listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
            port = int(listeners[0].socket.getsockname()[1])
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(self.front_door.serve, listeners, connections)
                    log.info(
                        "minitalk-trio listening on http://%s:%d (%s mode)",
                        self.config.host,
                        port,
                        self.config.delivery_mode,
                    )
                    if self.freeze_gc:
                        # Everything made so far (modules, the app, the room registry) lives as long as the
                        # process: moved out of the collector's reach, a full collection no longer walks it.
                        # Before this, each gen-2 collection under a bombing stopped the loop for up to 72 ms.
                        gc.freeze()
                    task_status.started(port)
                    await self._shutdown.wait()
                    accepting.cancel_scope.cancel()
                for listener in listeners:
                    await listener.aclose()
                await self._settle_accepted()
                log.info("stopped accepting; closing %d sessions", len(self.hub.sessions))
                for hub in (self.hub, *self.engine_hubs.values()):
                    hub.close_all("server shutting down")
                await self.http.begin_shutdown()
                with trio.move_on_after(self.config.shutdown_timeout):
                    await self.http.wait_requests_done()
                connections.cancel_scope.cancel()  # what is left is idle keep-alive connections
            hub_scope.cancel_scope.cancel()
