"""Upstream attempt spans through the real server: each retry, each fallback tier and each tier a
stream tries is a CLIENT child of the request's span, exported to a real OTLP collector, with the
GenAI and tierwise attributes the README lists and never the prompt, the answer or the user."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.harness import AUTH, build_config, config_dict, running_server
from tests.otlp_collector import CollectedSpan, Collector, collector  # noqa: F401 - the fixture
from tests.upstream import ScriptedUpstream
from tierwise.router.config import Config
from tierwise.router.observability.attempt_spans import traced_providers
from tierwise.router.observability.tracing import Tracing
from tierwise.router.providers.base import Provider
from tierwise.v1 import tierwise_pb2 as pb

PROMPT = "Summarise the merger memo for Project Bluebird"
USER = "end-user-4711"
ANSWER = "Bluebird closes in March."
# An upstream that quotes the prompt in its error body: the span's status must not repeat it.
ECHO = f"cannot process: {PROMPT}"


def request(**fields: Any) -> pb.CompleteRequest:
    return pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content=PROMPT)], user=USER, **fields)


@dataclass(frozen=True)
class Traced:
    config: Config  # the harness's two tiers, exporting to ``collector``
    collector: Collector


@pytest.fixture
def traced(tmp_path: Path, upstream: ScriptedUpstream, collector: Collector) -> Traced:  # noqa: F811
    tracing = {"otlp_endpoint": collector.endpoint, "service_name": "tierwise-test"}
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url, tracing=tracing)
    return Traced(build_config(data), collector)


def request_and_attempts(exported: Collector, rpc: str) -> tuple[CollectedSpan, list[CollectedSpan]]:
    """The request's span and its attempt children in order (the server has stopped: all exported)."""
    assert exported.received.is_set(), "the server exported no span"
    (root,) = [s for s in exported.spans if s.name == f"tierwise.{rpc}"]
    attempts = sorted(
        (s for s in exported.spans if s.kind == Span.SPAN_KIND_CLIENT),
        key=lambda s: int(s.attributes["tierwise.attempt"]),
    )
    for attempt in attempts:
        assert (attempt.trace_id, attempt.parent_span_id) == (root.trace_id, root.span_id), attempt
    for span in exported.spans:
        assert span.name.startswith("tierwise.") or span.parent_span_id == root.span_id
        _assert_nothing_private(span)
    return root, attempts


def _assert_nothing_private(span: CollectedSpan) -> None:
    texts = [span.name, span.status_message, *span.attributes, *map(str, span.attributes.values())]
    texts += [f"{name} {attributes}" for name, attributes in span.events]
    for private in (PROMPT, "Bluebird", USER):
        assert not any(private in text for text in texts), (private, span)


def place(span: CollectedSpan) -> tuple[Any, ...]:
    a = span.attributes
    return (a["tierwise.tier"], a["tierwise.attempt"], a["tierwise.tier_attempt"], a["tierwise.retry"],
            a["tierwise.fallback"], a["tierwise.outcome"])  # fmt: skip


def failed_as(span: CollectedSpan) -> tuple[Any, ...]:
    return (
        span.attributes.get("error.type"),
        span.attributes.get("http.response.status_code"),
        span.status_code,
        span.status_message,
    )


def assert_upstream_failed(span: CollectedSpan, error_type: str, http_status: int) -> None:
    expected = (error_type, http_status, Status.STATUS_CODE_ERROR, f"{error_type} (HTTP {http_status})")
    assert failed_as(span) == expected


async def small_model_called(upstream: ScriptedUpstream, times: int = 1) -> None:
    while len(upstream.requests_for("small-model")) < times:
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_a_retry_then_success_is_two_attempt_children_of_the_request_span(
    upstream: ScriptedUpstream, traced: Traced
) -> None:
    first_try_answers = asyncio.Event()
    upstream.script("small-model", status=503, error_message=ECHO, release=first_try_answers)
    async with running_server(traced.config) as svc:
        call = svc.stub.Complete(request(max_tokens=64, temperature=0.5), metadata=AUTH, timeout=10)
        await small_model_called(upstream)  # the first try holds its 503 until released
        upstream.script("small-model", text=ANSWER, input_tokens=11, output_tokens=4)
        first_try_answers.set()
        response = await call
        assert response.content == ANSWER
    root, attempts = request_and_attempts(traced.collector, "Complete")
    assert [place(a) for a in attempts] == [
        ("small", 1, 1, False, False, "error"),
        ("small", 2, 2, True, False, "ok"),
    ]
    assert_upstream_failed(attempts[0], "server_error", 503)
    assert attempts[1].name == "chat small-model" and attempts[1].status_code == Status.STATUS_CODE_UNSET
    assert attempts[1].attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "small-model",
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.response.model": "small-model",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 4,
        "server.address": "127.0.0.1",
        "server.port": upstream.port,
        "tierwise.tier": "small",
        "tierwise.attempt": 2,
        "tierwise.tier_attempt": 2,
        "tierwise.retry": True,
        "tierwise.fallback": False,
        "tierwise.stream": False,
        "tierwise.outcome": "ok",
    }
    assert root.attributes["tierwise.attempts"] == 2


@pytest.mark.asyncio
async def test_a_fallback_gives_each_tier_tried_its_own_attempt_children(
    upstream: ScriptedUpstream, traced: Traced
) -> None:
    upstream.script("small-model", status=500, error_message=ECHO)
    upstream.script("large-model", text=ANSWER, input_tokens=9, output_tokens=5)
    async with running_server(traced.config) as svc:
        response = await svc.stub.Complete(request(), metadata=AUTH, timeout=10)
        assert response.decision.reason == "fallback"
    root, attempts = request_and_attempts(traced.collector, "Complete")
    # a server error is retried once on the same tier, then the next tier answers
    assert [place(a) for a in attempts] == [
        ("small", 1, 1, False, False, "error"),
        ("small", 2, 2, True, False, "error"),
        ("large", 3, 1, False, True, "ok"),
    ]
    assert [a.name for a in attempts] == ["chat small-model"] * 2 + ["chat large-model"]
    assert [a.attributes["gen_ai.provider.name"] for a in attempts] == ["openai", "openai", "anthropic"]
    large = attempts[2].attributes
    assert (large["gen_ai.usage.input_tokens"], large["gen_ai.usage.output_tokens"]) == (9, 5)
    assert large["gen_ai.response.finish_reasons"] == ("stop",)  # end_turn, as the provider maps it
    assert large["gen_ai.request.max_tokens"] == 2048  # the request set none: the tier's bound was sent
    assert "error.type" not in large
    assert root.attributes["tierwise.fallback"] is True


@pytest.mark.asyncio
async def test_a_stream_has_a_child_per_tier_it_tried(upstream: ScriptedUpstream, traced: Traced) -> None:
    upstream.script("small-model", status=429, error_message=ECHO)
    upstream.script("large-model", text=ANSWER, input_tokens=9, output_tokens=5)
    async with running_server(traced.config) as svc:
        chunks = [c async for c in svc.stub.CompleteStream(request(), metadata=AUTH, timeout=10)]
        assert "".join(c.delta for c in chunks) == ANSWER
    _, attempts = request_and_attempts(traced.collector, "CompleteStream")
    assert [place(a) for a in attempts] == [
        ("small", 1, 1, False, False, "error"),
        ("large", 2, 1, False, True, "ok"),
    ]
    assert_upstream_failed(attempts[0], "rate_limited", 429)
    large = attempts[1].attributes
    assert large["tierwise.stream"] is True and large["gen_ai.response.model"] == "large-model"
    assert (large["gen_ai.usage.input_tokens"], large["gen_ai.usage.output_tokens"]) == (9, 5)


@pytest.mark.asyncio
async def test_an_attempt_the_caller_abandons_is_a_span_marked_cancelled(
    upstream: ScriptedUpstream, traced: Traced
) -> None:
    upstream.script("small-model", hang=True)
    async with running_server(traced.config) as svc:
        call = svc.stub.Complete(request(), metadata=AUTH, timeout=10)
        await small_model_called(upstream)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        stream = svc.stub.CompleteStream(request(), metadata=AUTH, timeout=10)
        await small_model_called(upstream, times=2)
        stream.cancel()
        assert await stream.code() == grpc.StatusCode.CANCELLED
    for rpc in ("Complete", "CompleteStream"):
        root = next(s for s in traced.collector.spans if s.name == f"tierwise.{rpc}")
        (attempt,) = [s for s in traced.collector.spans if s.parent_span_id == root.span_id]
        assert place(attempt) == ("small", 1, 1, False, False, "cancelled"), rpc
        assert failed_as(attempt) == ("cancelled", None, Status.STATUS_CODE_ERROR, "cancelled"), rpc


@pytest.mark.asyncio
async def test_an_upstream_error_that_quotes_the_prompt_reaches_no_span(
    upstream: ScriptedUpstream, traced: Traced
) -> None:
    upstream.script(status=400, error_message=ECHO)  # a client error: no retry, no fallback
    async with running_server(traced.config) as svc:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await svc.stub.Complete(request(), metadata=AUTH, timeout=10)
        assert PROMPT in (caught.value.details() or "")  # the caller may see it; the trace may not
    root, attempts = request_and_attempts(traced.collector, "Complete")
    assert [place(a) for a in attempts] == [("small", 1, 1, False, False, "error")]
    assert_upstream_failed(attempts[0], "client_error", 400)
    assert (root.status_code, root.status_message) == (Status.STATUS_CODE_ERROR, "INVALID_ARGUMENT")


def test_with_tracing_off_the_pipeline_gets_the_providers_unwrapped(tmp_path: Path) -> None:
    config = build_config(config_dict(tmp_path / "var", "http://127.0.0.1:9/v1", "http://127.0.0.1:9"))
    providers: dict[str, Provider] = {}  # never looked into when tracing is off
    assert traced_providers(config.tiers, providers, Tracing(config.tracing)) is providers
