"""Traces: the OpenTelemetry SDK, off unless the standard ``OTEL_*`` environment asks for it.

What the operators of the original already set on their pods decides everything, as in its ``tracing.js``:

* ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) turns tracing on, exporting OTLP;
  ``OTEL_TRACES_EXPORTER`` may name ``otlp``, ``console`` or ``none`` instead; ``OTEL_SDK_DISABLED=true`` wins;
* ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or ``…_TRACES_PROTOCOL``): ``grpc`` (the default: the original's agent
  listens on gRPC, port 4317) or ``http/protobuf`` (port 4318, path ``/v1/traces``);
* ``OTEL_SERVICE_NAME`` (default ``minitalk-trio``), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and
  ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_BSP_*`` (the batch processor), the exporter's headers and timeouts: all read
  by the SDK itself.

Spans: every REST request (``http_app``), every Engine.IO handshake (``hub.open_session``), every Socket.IO
CONNECT (``chat.on_connect``), and a sample of ``send_message`` events (``--trace-messages``, default 1%): a
``send_message`` span from the frame's arrival to its ack, with children ``queue`` (waiting for the batch),
``commit``, ``broadcast`` and ``ack``. A batch carries many messages and commits once, so those children are
made after the fact with their measured start and end times; only sampled messages pay for it.

Cost: with tracing off, :data:`OFF` answers every question with one attribute read, and the SDK and
exporters are never imported (the API is: 20 ms at start). With tracing on, the SDK's batch processor exports
from its own thread, so the event loop never waits for the collector; spans past its queue
(``OTEL_BSP_MAX_QUEUE_SIZE``) are dropped, never blocking.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "minitalk-trio"
PROTOCOLS = ("grpc", "http/protobuf")


class TracingConfigError(ValueError):
    """The OTEL_* environment asks for something this server cannot do (named in the message)."""


class Tracing:
    """The server's tracer, or none (``enabled`` False): callers check ``enabled`` before building anything."""

    def __init__(self, provider: TracerProvider | None = None, message_ratio: float = 0.0) -> None:
        self._provider = provider
        self._tracer: Tracer | None = provider.get_tracer("minitalk-trio") if provider is not None else None
        self.enabled = provider is not None
        # Sampled sends: decided here, before any span exists, so an unsampled message costs one random().
        self.message_ratio = message_ratio if self.enabled else 0.0

    @property
    def tracer(self) -> Tracer:
        assert self._tracer is not None, "check Tracing.enabled first"
        return self._tracer

    def sample_message(self) -> bool:
        return self.message_ratio > 0 and random.random() < self.message_ratio

    def start(
        self,
        name: str,
        *,
        start_ns: int | None = None,
        parent: Span | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        **attributes: Any,
    ) -> Span:
        """A span that the caller ends (``span.end(end_time=…)``); a child of ``parent`` when given, else of the
        current span."""
        context = trace.set_span_in_context(parent) if parent is not None else None
        return self.tracer.start_span(name, context=context, kind=kind, start_time=start_ns, attributes=attributes)

    def child(self, parent: Span, name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
        """A finished child span with measured times (a step a whole batch took together)."""
        self.start(name, start_ns=start_ns, parent=parent, **attributes).end(end_time=end_ns)

    def failed(self, span: Span, error_type: str, description: str) -> None:
        """Mark ``span`` as failed (``error.type`` and an error status), as the semantic conventions ask."""
        span.set_attribute("error.type", error_type)
        span.set_status(StatusCode.ERROR, description)

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Span | None]:
        """A span around a block, current for it (so spans inside become its children); none when off."""
        if self._tracer is None:
            yield None
            return
        with self._tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    def shutdown(self) -> None:
        """Export what is buffered (blocking: run it in a thread at the end)."""
        if self._provider is not None:
            self._provider.shutdown()


OFF = Tracing()


def now_ns() -> int:
    return time.time_ns()


def tracing_from_env(environ: Mapping[str, str], *, message_ratio: float, version: str = "unknown") -> Tracing:
    """The tracing the environment asks for: :data:`OFF` unless an OTLP endpoint or an exporter is named."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return OFF
    exporters = [e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if not exporters:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        exporters = ["otlp"] if endpoint else []
    exporters = [e for e in exporters if e != "none"]
    if not exporters:
        return OFF
    unknown = sorted(set(exporters) - {"otlp", "console"})
    if unknown:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}: this server knows otlp, console")
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    ).strip()
    if "otlp" in exporters and protocol not in PROTOCOLS:
        raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: use one of {', '.join(PROTOCOLS)}")

    # The SDK and its exporters (gRPC's among them: 0.1 s to import) load only when tracing is on.
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    attributes: dict[str, str] = {"service.version": version}
    if not environ.get("OTEL_SERVICE_NAME") and "service.name=" not in environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = DEFAULT_SERVICE_NAME
    # The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on) inside the SDK.
    provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    for name in exporters:
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter as GrpcExporter,
            )

            exporter = GrpcExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter as HttpExporter,
            )

            exporter = HttpExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    where = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "-"
    log.info(
        "tracing on: %s (%s to %s), %g of send_message events sampled",
        ", ".join(exporters),
        protocol,
        where,
        message_ratio,
    )
    return Tracing(provider, message_ratio)
