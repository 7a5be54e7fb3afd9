"""A real OTLP/gRPC trace collector on a free port: what a tierwise with ``tracing.otlp_endpoint``
exports, span by span, with ids, parent, kind, attributes and status."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass(frozen=True)
class CollectedSpan:
    name: str
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    attributes: dict[str, Any]
    status_code: int  # opentelemetry.proto.trace.v1.Status.StatusCode
    status_message: str
    events: tuple[tuple[str, dict[str, Any]], ...]  # (name, attributes), e.g. a recorded exception


def _value(value: AnyValue) -> Any:
    field = value.WhichOneof("value")
    if field == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    return getattr(value, field) if field else None


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[CollectedSpan] = []
        self.resources: list[dict[str, str]] = []
        self.received = threading.Event()
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def names(self) -> list[str]:
        return [span.name for span in self.spans]

    def Export(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            self.resources.append({a.key: a.value.string_value for a in resource_spans.resource.attributes})
            for scope in resource_spans.scope_spans:
                self.spans += [
                    CollectedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status_code=span.status.code,
                        status_message=span.status.message,
                        events=tuple(
                            (event.name, {a.key: _value(a.value) for a in event.attributes})
                            for event in span.events
                        ),
                    )
                    for span in scope.spans
                ]
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[Collector]:
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    servicer.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer
    server.stop(None)
