"""The quart-trio application: routes, CORS as ``cors()`` does it, and JSON for every error."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence

from opentelemetry import context, trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from quart import Blueprint, Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from protocol.rest import RequestError
from server.http_io import error_response, json_response
from server.routes_auth import auth_routes
from server.routes_chat import chat_routes
from server.services import Services
from server.tracing import Tracing
from storage.errors import StorageUnavailableError

log = logging.getLogger(__name__)
access = logging.getLogger("server.access")

# Express's cors() defaults (contract §1.0).
_ALLOW_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE"


def _route() -> str:
    """The matched route's template (``/api/chatrooms/<room_id>/messages``): the label, never the raw path."""
    return request.url_rule.rule if request.url_rule is not None else "<unmatched>"


def _start_span(tracing: Tracing) -> None:
    """The request's span, current while it is handled: spans made inside (polling's Engine.IO handshake)
    become its children."""
    if not tracing.enabled:
        return
    route = _route()
    span = tracing.start(f"{request.method} {route}", kind=SpanKind.SERVER)
    span.set_attribute("http.request.method", request.method)
    span.set_attribute("http.route", route)
    span.set_attribute("url.path", request.path)
    g.span, g.span_token = span, context.attach(trace.set_span_in_context(span))


def _end_span(status: int | None) -> None:
    span: Span | None = g.pop("span", None)
    if span is None:
        return
    context.detach(g.pop("span_token"))
    if status is not None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(StatusCode.ERROR)
    span.end()


async def _end_span_at_teardown(error: BaseException | None) -> None:
    """A request that ended without a response (cancelled, crashed) still ends its span."""
    _end_span(500 if error is not None else None)


def create_app(svc: Services, extra: Sequence[Blueprint] = ()) -> QuartTrio:
    app = QuartTrio("minitalk")
    app.config["MAX_CONTENT_LENGTH"] = svc.max_body_bytes
    app.url_map.strict_slashes = False  # Express matches /api/chatrooms/ as /api/chatrooms
    app.register_blueprint(auth_routes(svc))
    app.register_blueprint(chat_routes(svc))
    for blueprint in extra:
        app.register_blueprint(blueprint)

    @app.get("/health")
    async def health() -> Response:
        return json_response({"status": "OK", "message": "MiniTalk Backend is running"})

    @app.get("/ready")
    async def ready() -> Response:
        health = svc.health
        if health.storage_failing:
            # Probe, so that recovery is seen even when no traffic arrives: a load balancer stops sending
            # requests to a server that is not ready. The probe reports its outcome to health itself.
            with contextlib.suppress(StorageUnavailableError):
                await svc.storage.check_writable()
        if not health.ready:
            return json_response({"status": "NOT READY", "message": health.reason}, 503)
        return json_response({"status": "OK", "message": "MiniTalk Backend is ready"})

    @app.before_request
    async def started() -> None:  # first, so that every request is timed (preflight may answer at once)
        g.started = time.perf_counter()
        _start_span(svc.tracing)

    @app.before_request
    async def preflight() -> Response | None:
        if request.method != "OPTIONS":
            return None
        response = Response(b"", status=204)
        response.headers["Access-Control-Allow-Methods"] = _ALLOW_METHODS
        asked = request.headers.get("Access-Control-Request-Headers")
        if asked:
            response.headers["Access-Control-Allow-Headers"] = asked
            response.headers["Vary"] = "Access-Control-Request-Headers"
        return response

    @app.after_request
    async def cors(response: Response) -> Response:
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    @app.after_request
    async def access_log(response: Response) -> Response:
        """One line per REST request (method, route template, status, duration); probes, metrics and polling
        requests at debug: they are the machinery, not the traffic."""
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        route = _route()
        _end_span(response.status_code)
        level = logging.INFO if request.path.startswith("/api/") else logging.DEBUG
        if svc.metrics is not None and level == logging.INFO:
            svc.metrics.http_requests.labels(request.method, route, str(response.status_code)).inc()
        access.log(
            level,
            "%s %s %d %.1f ms",
            request.method,
            route,
            response.status_code,
            seconds * 1000,
            extra={
                "method": request.method,
                "path": route,
                "status": response.status_code,
                "duration_s": round(seconds, 6),
            },
        )
        return response

    app.teardown_request(_end_span_at_teardown)

    @app.errorhandler(RequestError)
    async def bad_request(error: RequestError) -> Response:
        response = error_response(error.status, error.message)
        if error.retry_after is not None:
            response.headers["Retry-After"] = str(error.retry_after)
        return response

    @app.errorhandler(StorageUnavailableError)
    async def storage_unavailable(error: StorageUnavailableError) -> Response:
        # Already reported to svc.health by the storage proxy; nothing was changed, so a retry is safe.
        log.debug("%s %s: %s", request.method, request.path, error)  # health logs the outage once
        response = error_response(503, "Storage temporarily unavailable, try again")
        response.headers["Retry-After"] = str(svc.storage_retry_after)
        return response

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status in (404, 405):  # Express has no 405: an unmatched method is an unmatched route
            return error_response(404, f"Cannot {request.method} {request.path}")
        if status == 413:
            return error_response(413, f"Request body too large: the limit is {svc.max_body_bytes} bytes")
        return error_response(status, error.description or error.name)

    @app.errorhandler(Exception)
    async def internal_error(error: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path, exc_info=error)
        return error_response(500, "Internal server error")

    return app
