"""OpenTelemetry traces: one span per request, child spans for its steps and upstream attempts.

Off unless ``tracing.otlp_endpoint`` is set (or a span processor is passed in,
as tests do): then every helper hands back the invalid, non-recording span
without touching the context, which costs next to nothing. Each ``Tracing``
owns its ``TracerProvider`` rather than installing a global one, so several
servers (or tests) in one process keep their spans apart.

Attributes follow the GenAI semantic conventions (``gen_ai.*``) plus tierwise's
own (``tierwise.*``). Prompt text and end-user ids are never attributes, and exceptions are
not recorded as events (a traceback may chain an upstream error body that quotes the prompt).
Upstream attempts get their spans from ``attempt_spans``, which wraps each provider.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from tierwise.router.config import TracingConfig
from tierwise.router.ledger.record import SpendRecord

Attributes = Mapping[str, AttributeValue]

# The request's log of upstream attempts rides in the OTel context beside the request span, so an
# attempt span knows its place (retry, fallback) without the pipeline passing anything down.
_ATTEMPTS_KEY = otel_context.create_key("tierwise.attempts")


@dataclass(frozen=True, slots=True)
class AttemptPlace:
    """Where an upstream attempt stands in its request."""

    number: int  # 1-based, across every tier the request tried
    tier_try: int  # 1-based, on this attempt's tier: 2 and up are retries
    fallback: bool  # an earlier attempt of the request went to another tier


class _AttemptLog:
    def __init__(self) -> None:
        self._tiers: list[str] = []

    def next(self, tier: str) -> AttemptPlace:
        fallback = bool(self._tiers) and self._tiers[0] != tier
        self._tiers.append(tier)
        return AttemptPlace(len(self._tiers), self._tiers.count(tier), fallback)


def next_attempt(tier: str) -> AttemptPlace:
    """Count one more attempt on ``tier`` in the current request (a call outside one is its own first)."""
    log = otel_context.get_value(_ATTEMPTS_KEY)
    if not isinstance(log, _AttemptLog):
        return AttemptPlace(1, 1, False)
    return log.next(tier)


def genai_attributes(provider: str, model: str, operation: str = "chat") -> dict[str, AttributeValue]:
    """What an upstream call span carries before it runs."""
    return {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
    }


def spend_attributes(rec: SpendRecord) -> dict[str, AttributeValue]:
    """What a finished request's span carries: usage, cost, the routing outcome."""
    attributes: dict[str, AttributeValue] = {
        "tierwise.tenant": rec.tenant,
        "tierwise.feature": rec.feature,
        "tierwise.tier": rec.tier,
        "tierwise.reason": rec.reason,
        "tierwise.cache_result": rec.cache_result,
        "tierwise.cost_usd": float(rec.cost_usd),
        "tierwise.saved_usd": float(rec.saved_usd),
        "tierwise.attempts": rec.attempts,
        "tierwise.fallback": rec.fallback,
        "tierwise.overhead_ms": rec.overhead_ms,
        "tierwise.status": rec.status,
    }
    if rec.experiment:
        attributes["tierwise.experiment"] = rec.experiment
        attributes["tierwise.arm"] = rec.arm
    if rec.model:
        attributes.update(genai_attributes(rec.provider, rec.model))
    if rec.attempts and rec.ok:
        attributes["gen_ai.usage.input_tokens"] = rec.input_tokens
        attributes["gen_ai.usage.output_tokens"] = rec.output_tokens
    if not rec.ok:
        attributes["error.type"] = rec.error_type or rec.status
    return attributes


def mark_error(span: Span, error_type: str, message: str = "") -> None:
    """Flag a span as failed with a low-cardinality ``error.type`` (e.g. "timeout", "UNAVAILABLE")."""
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, message or error_type))


class Tracing:
    def __init__(self, config: TracingConfig, *, processor: SpanProcessor | None = None) -> None:
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        if processor is None and config.otlp_endpoint is None:
            return
        if processor is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint))
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("tierwise")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def extract(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Context | None:
        """The caller's trace context from gRPC metadata (W3C ``traceparent``/``tracestate``)."""
        if self._tracer is None or not metadata:
            return None
        carrier = {key.lower(): value for key, value in metadata if isinstance(value, str)}
        return propagate.extract(carrier)

    def inject(self) -> dict[str, str]:
        """Headers that continue the current trace in an outgoing call (empty when off)."""
        carrier: dict[str, str] = {}
        if self._tracer is not None:
            propagate.inject(carrier)
        return carrier

    @contextlib.contextmanager
    def request_span(
        self, name: str, attributes: Attributes | None = None, parent_context: Context | None = None
    ) -> Iterator[Span]:
        """The request's root span (a child of the caller's trace when ``parent_context`` has one),
        current for the block with a fresh log of the request's upstream attempts."""
        with self._span(name, attributes, SpanKind.SERVER, parent_context) as span:
            if self._tracer is None:
                yield span
                return
            token = otel_context.attach(otel_context.set_value(_ATTEMPTS_KEY, _AttemptLog()))
            try:
                yield span
            finally:
                otel_context.detach(token)

    @contextlib.contextmanager
    def child_span(
        self, name: str, attributes: Attributes | None = None, kind: SpanKind = SpanKind.INTERNAL
    ) -> Iterator[Span]:
        """A step of the current request: embed, cache, classify, or an upstream attempt (kind CLIENT)."""
        with self._span(name, attributes, kind, None) as span:
            yield span

    def start_attempt(self, name: str, attributes: Attributes) -> Span:
        """An upstream attempt's CLIENT span, a child of the current span; never made current, so a
        stream's attempt can stay open across yields without leaking into the caller's context.
        The caller ends it."""
        if self._tracer is None:
            return trace.INVALID_SPAN
        return self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)

    @contextlib.contextmanager
    def _span(
        self, name: str, attributes: Attributes | None, kind: SpanKind, context: Context | None
    ) -> Iterator[Span]:
        if self._tracer is None:
            yield trace.INVALID_SPAN
            return
        # No exception events, no status from an exception: a traceback chains the upstream's error
        # body, which may quote the prompt. ``finish_request`` and ``mark_error`` say what failed.
        with self._tracer.start_as_current_span(
            name,
            context=context,
            kind=kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    def shutdown(self) -> None:
        """Export what is buffered and stop (blocking: call it from a worker thread in async code)."""
        if self._provider is not None:
            self._provider.shutdown()


def attempt_span_name(model: str, operation: str = "chat") -> str:
    """The GenAI convention's span name for an upstream call: "{operation} {model}"."""
    return f"{operation} {model}"


def finish_request(span: Span, rec: SpendRecord) -> None:
    """Put a finished request's outcome on its span; a failed one is marked as an error."""
    span.set_attributes(spend_attributes(rec))
    if not rec.ok:
        mark_error(span, rec.error_type or rec.status, rec.status)
