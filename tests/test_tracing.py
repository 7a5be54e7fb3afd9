"""Traces: a request span with child spans, GenAI attributes, W3C context from gRPC metadata, OTLP export."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN, SpanKind, StatusCode

from tests.otlp_collector import Collector, collector  # noqa: F401 - the fixture
from tests.test_ledger import spend
from tierwise.router.config import TracingConfig
from tierwise.router.observability.tracing import Tracing, attempt_span_name, finish_request, genai_attributes

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def traced(**config: Any) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracing(TracingConfig(**config), processor=SimpleSpanProcessor(exporter)), exporter


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def run_request(tracing: Tracing, metadata: list[tuple[str, str | bytes]] | None = None) -> None:
    with tracing.request_span(
        "tierwise.Complete", {"rpc.method": "Complete"}, tracing.extract(metadata)
    ) as root:
        with tracing.child_span("embed"):
            pass
        with tracing.child_span("cache", {"tierwise.cache_result": "miss"}):
            pass
        with tracing.child_span("classify"):
            pass
        for tier, model, provider in (
            ("small", "small-model", "openai"),
            ("large", "large-model", "anthropic"),
        ):
            attributes = {**genai_attributes(provider, model), "tierwise.tier": tier}
            with tracing.child_span(attempt_span_name(model), attributes, kind=SpanKind.CLIENT):
                pass
        finish_request(root, spend(1, tier="large", model="large-model", provider="anthropic", fallback=True))


def test_a_request_span_has_step_and_attempt_children_with_genai_attributes() -> None:
    tracing, exporter = traced()
    run_request(tracing)
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {
        "tierwise.Complete",
        "embed",
        "cache",
        "classify",
        "chat small-model",
        "chat large-model",
    }
    root = spans["tierwise.Complete"]
    assert root.kind is SpanKind.SERVER and root.parent is None
    for name in ("embed", "cache", "classify", "chat small-model", "chat large-model"):
        assert spans[name].parent is not None and spans[name].parent.span_id == root.context.span_id
        assert spans[name].context.trace_id == root.context.trace_id
    attempt = spans["chat small-model"]
    assert attempt.kind is SpanKind.CLIENT
    assert dict(attempt.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "small-model",
        "tierwise.tier": "small",
    }
    attributes = dict(root.attributes or {})
    assert attributes["gen_ai.usage.input_tokens"] == 101 and attributes["gen_ai.usage.output_tokens"] == 20
    assert attributes["gen_ai.request.model"] == "large-model"
    assert attributes["tierwise.tenant"] == "acme" and attributes["tierwise.tier"] == "large"
    assert (
        attributes["tierwise.cost_usd"] == pytest.approx(0.0000815)
        and attributes["tierwise.fallback"] is True
    )
    assert not any("user" in key or "prompt" in key for key in attributes)
    assert root.status.status_code is StatusCode.UNSET


def test_the_callers_traceparent_makes_the_request_a_child_of_its_trace() -> None:
    tracing, exporter = traced()
    metadata: list[tuple[str, str | bytes]] = [
        ("authorization", "Bearer x"),
        ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),
        ("blob-bin", b"\x00\x01"),
    ]
    run_request(tracing, metadata)
    root = by_name(exporter.get_finished_spans())["tierwise.Complete"]
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert (
        root.parent is not None and format(root.parent.span_id, "016x") == PARENT_ID and root.parent.is_remote
    )


def test_sampling_follows_the_caller_and_the_ratio_for_new_traces() -> None:
    tracing, exporter = traced(sample_ratio=0.0)
    run_request(tracing)
    assert exporter.get_finished_spans() == ()
    run_request(tracing, [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")])  # the caller sampled it
    assert len(exporter.get_finished_spans()) == 6


def test_a_failed_request_is_marked_with_its_error_type() -> None:
    tracing, exporter = traced()
    with tracing.request_span("tierwise.Complete") as root:
        finish_request(root, spend(1, status="UNAVAILABLE", error_type="timeout", cost_usd=Decimal(0)))
    span = exporter.get_finished_spans()[0]
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "timeout"


def test_tracing_is_off_without_an_endpoint_and_costs_nothing_then() -> None:
    tracing = Tracing(TracingConfig())
    assert not tracing.enabled
    assert tracing.extract([("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")]) is None
    assert tracing.inject() == {}
    with tracing.request_span("tierwise.Complete", {"a": 1}) as root, tracing.child_span("embed") as child:
        assert root is INVALID_SPAN and child is INVALID_SPAN
        finish_request(root, spend(1))
    tracing.shutdown()


def test_inject_continues_the_current_trace_in_outgoing_headers() -> None:
    tracing, _ = traced()
    with tracing.request_span(
        "tierwise.Complete",
        parent_context=tracing.extract([("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")]),
    ):
        headers = tracing.inject()
    assert headers["traceparent"].startswith(f"00-{TRACE_ID}-")


def test_spans_reach_an_otlp_collector_when_an_endpoint_is_configured(collector: Collector) -> None:  # noqa: F811
    tracing = Tracing(TracingConfig(otlp_endpoint=collector.endpoint, service_name="tierwise-test"))
    assert tracing.enabled
    run_request(tracing)
    tracing.shutdown()  # exports what the batch processor holds
    assert collector.received.wait(10)
    assert sorted(collector.names) == sorted(
        ["tierwise.Complete", "embed", "cache", "classify", "chat small-model", "chat large-model"]
    )
    assert collector.resources[0]["service.name"] == "tierwise-test"
