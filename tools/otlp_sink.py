"""A small OTLP trace receiver for tests and demos: gRPC and HTTP/protobuf, spans kept in memory, trees printed.

``python -m tools.otlp_sink --grpc-port 4317 --http-port 4318`` listens on 127.0.0.1 and prints each trace as a
tree of spans (name, duration, attributes) as it completes; Ctrl-C stops it. Point the server at it with
``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317`` (gRPC, the default) or ``…:4318`` with
``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf``. Not a collector: nothing is stored or forwarded.
"""

from __future__ import annotations

import argparse
import http.server
import signal
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
import msgspec
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

MAX_BODY_BYTES = 64 * 1024 * 1024


class ReceivedSpan(msgspec.Struct, frozen=True):
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    protocol: str  # how it arrived: grpc or http/protobuf

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind is not None else None


class SpanStore:
    """Spans received so far, from either protocol (thread-safe: the receivers run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self.requests = 0

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest, protocol: str) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name", "")),
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            name=s.name,
                            kind=s.kind,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            status_code=s.status.code,
                            protocol=protocol,
                        )
                    )
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def take(self) -> list[ReceivedSpan]:
        """The spans received since the last ``take`` (the printing loop keeps no unbounded list)."""
        with self._lock:
            taken, self._spans = self._spans, []
            return taken


def span_tree(spans: list[ReceivedSpan], root: ReceivedSpan) -> str:
    """The trace under ``root`` as indented text: name, duration, offset from the root, attributes."""
    children: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        if s.trace_id == root.trace_id:
            children.setdefault(s.parent_id, []).append(s)
    lines: list[str] = []

    def walk(span: ReceivedSpan, depth: int) -> None:
        attrs = " ".join(f"{k}={v}" for k, v in sorted(span.attributes.items()))
        offset = (span.start_ns - root.start_ns) / 1e6
        error = " ERROR" if span.status_code == 2 else ""
        lines.append(f"{'  ' * depth}{span.name}  {span.duration_ms:.3f} ms (+{offset:.3f} ms){error}  {attrs}")
        for child in sorted(children.get(span.span_id, []), key=lambda c: c.start_ns):
            walk(child, depth + 1)

    walk(root, 0)
    return "\n".join(lines)


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: SpanStore) -> None:
        self._store = store

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._store.add(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


def _http_handler(store: SpanStore) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            if self.path != "/v1/traces" or not 0 < length <= MAX_BODY_BYTES:
                self.send_error(404 if self.path != "/v1/traces" else 400)
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(self.rfile.read(length))
            store.add(request, "http/protobuf")
            body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class Sink:
    """Both receivers on 127.0.0.1 (port 0 picks a free one), sharing one :class:`SpanStore`."""

    def __init__(self, *, grpc_port: int = 0, http_port: int = 0) -> None:
        self.store = SpanStore()
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        add_service = trace_service_pb2_grpc.add_TraceServiceServicer_to_server  # generated, untyped
        add_service(_TraceService(self.store), self._grpc)  # type: ignore[no-untyped-call]
        self.grpc_port = self._grpc.add_insecure_port(f"127.0.0.1:{grpc_port}")
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", http_port), _http_handler(self.store))
        self.http_port = int(self._http.server_address[1])
        self._http_thread = threading.Thread(target=self._http.serve_forever, name="otlp-http", daemon=True)

    def start(self) -> None:
        self._grpc.start()
        self._http_thread.start()

    def stop(self) -> None:
        self._grpc.stop(grace=None)
        self._http.shutdown()
        self._http.server_close()


@contextmanager
def running_sink() -> Iterator[Sink]:
    sink = Sink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.otlp_sink", description=__doc__)
    parser.add_argument("--grpc-port", type=int, default=4317)
    parser.add_argument("--http-port", type=int, default=4318)
    parser.add_argument("--roots", default="send_message", help="print trees of root spans with this name")
    args = parser.parse_args(argv)
    sink = Sink(grpc_port=args.grpc_port, http_port=args.http_port)
    sink.start()
    print(f"OTLP sink: grpc 127.0.0.1:{sink.grpc_port}, http/protobuf 127.0.0.1:{sink.http_port}/v1/traces")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it as Ctrl-C does
    received = 0
    try:
        while True:
            time.sleep(1)
            # A root span ends after its children, so a trace arrives whole in one export or the root last:
            # each second's spans are printed and dropped (memory stays flat however long it runs).
            spans = sink.store.take()
            received += len(spans)
            for root in spans:
                if root.parent_id == "" and root.name == args.roots:
                    print(span_tree(spans, root), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()
        print(f"{received} spans in {sink.store.requests} export requests")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
