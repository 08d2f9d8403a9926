"""The whole server as one service: storage, room registry, and the HTTP front, with their lifetimes.

Start order: storage opens (schema migrated), the registry loads, then the listener binds, so no request
is served before the data is ready. Stop order is the reverse: the listener drains (bounded by
``shutdown_timeout``), then storage finishes every accepted write and closes.
"""

from __future__ import annotations

import logging
from functools import partial

import hypercorn.config
import hypercorn.trio
import trio

from protocol.rest import Limits
from server.config import Config
from server.http_app import create_app
from server.passwords import PasswordHasher
from server.rooms import RoomRegistry
from server.services import Services
from server.tokens import Tokens
from storage.engine import StorageEngine
from storage.open import open_storage

log = logging.getLogger(__name__)


def _hypercorn_config(config: Config) -> hypercorn.config.Config:
    hc = hypercorn.config.Config()
    hc.bind = [f"{config.host}:{config.port}"]
    hc.graceful_timeout = config.shutdown_timeout
    hc.accesslog = None  # an access log line per request would cost more than the request under load
    hc.include_server_header = False
    hc.errorlog = logging.getLogger("hypercorn.error")  # through our handlers, not a second stream
    return hc


class MinitalkServer:
    def __init__(self, config: Config, *, storage: StorageEngine | None = None) -> None:
        self.config = config
        self.storage = storage or open_storage(config.database, sqlite_synchronous=config.sqlite_synchronous)
        self.registry = RoomRegistry(self.storage)
        limits = Limits(config.max_batch_items, config.max_participants, config.max_name_chars)
        hasher = PasswordHasher(
            rounds=config.bcrypt_rounds, batch_rounds=config.bcrypt_batch_rounds, threads=config.hash_threads
        )
        services = Services(
            self.storage, self.registry, Tokens(config.jwt_secret), hasher, limits, config.max_body_bytes
        )
        self.app = create_app(services)
        self._shutdown = trio.Event()

    @property
    def shutdown_requested(self) -> bool:
        return self._shutdown.is_set()

    def request_shutdown(self) -> None:
        """Begin a graceful stop: stop accepting, drain requests, flush storage; ``run`` then returns."""
        self._shutdown.set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``request_shutdown``; reports the bound TCP port once listening."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.storage.run)
            try:
                await self.registry.load()
                serve = partial(
                    hypercorn.trio.serve,
                    self.app,
                    _hypercorn_config(self.config),
                    shutdown_trigger=self._shutdown.wait,
                )
                async with trio.open_nursery() as http:
                    binds: list[str] = await http.start(serve)
                    port = int(binds[0].rsplit(":", 1)[1])
                    log.info("minitalk-trio listening on http://%s:%d", self.config.host, port)
                    task_status.started(port)
                log.info("HTTP stopped; closing storage")
            finally:
                nursery.cancel_scope.cancel()  # storage.run flushes and closes, shielded, on its way out
