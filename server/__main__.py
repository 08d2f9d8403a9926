"""``python -m server``: the whole server in one ``trio.run``. See ``--help`` for every option."""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys

import trio

from server import logs
from server.config import Config, ConfigError, load_config
from server.metrics import build_info
from server.service import MinitalkServer
from server.tokens import MIN_SECRET_BYTES
from server.tracing import OFF, Tracing, TracingConfigError, tracing_from_env
from storage.errors import StorageError

log = logging.getLogger("server")

# A second Ctrl-C, or a shutdown that overruns its budget by this much, cuts everything at once.
_SHUTDOWN_MARGIN_S = 2.0


async def serve_until_signalled(config: Config, tracing: Tracing = OFF) -> None:
    server = MinitalkServer(config, tracing=tracing, freeze_gc=True)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    if server.shutdown_requested:
                        log.warning("second %s: stopping now", signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return
                    log.info("%s: shutting down gracefully", signal.Signals(signum).name)
                    server.request_shutdown()
                    # Storage's final flush is shielded, so this deadline never loses accepted writes.
                    nursery.cancel_scope.deadline = trio.current_time() + config.shutdown_timeout + _SHUTDOWN_MARGIN_S

            nursery.start_soon(watch_signals)
            # The nursery's cancel scope covers this body too: the deadline above bounds server.run.
            await server.run()
            nursery.cancel_scope.cancel()  # run returned after a graceful stop: end the signal watcher


def raise_fd_limit() -> None:
    """Raise the soft descriptor limit to the hard one: every connection holds a descriptor.

    The soft limit is often 1,024 while the hard one is far higher; at 1,024 a thousand clients lock
    everyone else out. Failing to raise it is not fatal: the server runs with what it has, and says so.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Linux refuses an unlimited soft limit: the most a process may have is fs.nr_open.
    target = hard if hard != resource.RLIM_INFINITY else _kernel_fd_ceiling()
    if soft == target:
        log.info("descriptor limit (RLIMIT_NOFILE): %d, already the hard limit", soft)
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("descriptor limit (RLIMIT_NOFILE) stays at %d: raising it to %d failed: %s", soft, target, exc)
        return
    log.info("descriptor limit (RLIMIT_NOFILE) raised from %d to %d", soft, target)


def _kernel_fd_ceiling() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024 * 1024  # Linux's default nr_open


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_config(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        print(f"python -m server: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    raise_fd_limit()
    if config.uses_default_secret:
        log.warning(
            "JWT_SECRET is not set: tokens are signed with the public default %r. Anyone can forge a"
            " token. Set JWT_SECRET before exposing this server.",
            config.jwt_secret,
        )
    elif len(config.jwt_secret.encode()) < MIN_SECRET_BYTES:
        log.warning("JWT_SECRET is shorter than %d bytes; RFC 7518 asks for at least that for HS256", MIN_SECRET_BYTES)
    if config.admin_routes == "open":
        log.warning(
            "ADMIN_ROUTES=open: anyone who can reach this server can DELETE /api/auth/delete-all-users (then sign"
            " up again as any user and read that user's rooms) and any user can DELETE /api/messages/delete-all,"
            " as in the original. Set ADMIN_ROUTES=token (with ADMIN_TOKEN) or ADMIN_ROUTES=off before exposing"
            " this server."
        )
    try:
        tracing = tracing_from_env(os.environ, message_ratio=config.trace_messages, version=build_info()["version"])
    except TracingConfigError as exc:
        print(f"python -m server: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(serve_until_signalled, config, tracing)
    except Exception as error:
        leaves = _leaves(error)
        if not all(isinstance(exc, _EXPECTED_FAILURES) for exc in leaves):
            raise
        # Expected failures (bad database URL, port in use, unreadable file): one line each, no traceback.
        for leaf in leaves:
            log.error("cannot run: %s", leaf)  # noqa: TRY400 -- the traceback would only add noise
        return 1
    finally:
        tracing.shutdown()  # the last spans, exported before the process ends
    log.info("stopped")
    return 0


_EXPECTED_FAILURES = (StorageError, OSError)  # the storage engine wraps its driver's errors


def _leaves(error: BaseException) -> list[BaseException]:
    if not isinstance(error, BaseExceptionGroup):
        return [error]
    return [leaf for exc in error.exceptions for leaf in _leaves(exc)]


if __name__ == "__main__":
    sys.exit(main())
