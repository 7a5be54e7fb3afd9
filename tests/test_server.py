"""The gRPC service end to end: a real server on a free port, real provider clients,
a scripted upstream speaking the real protocols."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.harness import (
    AUTH,
    OTHER_AUTH,
    Running,
    build_config,
    config_dict,
    running_server,
    unavailable_details,
)
from tests.upstream import ScriptedUpstream
from tierwise.router.feedback.store import SqliteFeedbackStore
from tierwise.v1 import tierwise_pb2 as pb


def user(text: str) -> list[pb.ChatMessage]:
    return [pb.ChatMessage(role="user", content=text)]


@pytest_asyncio.fixture
async def svc(upstream: ScriptedUpstream, tmp_path: Path) -> AsyncIterator[Running]:
    config = build_config(config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url))
    async with running_server(config) as running:
        yield running


@pytest.mark.asyncio
async def test_complete_returns_upstream_text_usage_and_exact_cost(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script(text="Paris is the capital.", input_tokens=1234, output_tokens=567, cached_tokens=200)
    response = await svc.stub.Complete(pb.CompleteRequest(messages=user("Capital of France?")), metadata=AUTH)
    assert response.content == "Paris is the capital."
    assert response.finish_reason == "stop"
    assert (
        response.usage.input_tokens,
        response.usage.output_tokens,
        response.usage.cached_input_tokens,
    ) == (
        1234,
        567,
        200,
    )
    # small tier: 0.5 / 1.5 per Mtok, cached input 0.25: (1034*0.5 + 200*0.25 + 567*1.5) / 1e6
    assert Decimal(response.cost_usd_exact) == Decimal("0.0014175")
    assert response.cost_usd == pytest.approx(0.0014175, abs=1e-12)
    assert response.decision.tier == "small" and response.decision.model == "small-model"
    assert response.decision.reason == "cheapest"
    assert response.decision.request_id == response.request_id and len(response.request_id) == 32
    assert [(a.tier, a.ok) for a in response.attempts] == [("small", True)]
    assert response.latency.total_ms >= response.latency.upstream_ms > 0
    assert response.latency.overhead_ms == pytest.approx(
        response.latency.total_ms - response.latency.upstream_ms
    )
    sent = upstream.requests_for("small-model")[-1].body
    assert sent["messages"] == [{"role": "user", "content": "Capital of France?"}]


@pytest.mark.asyncio
async def test_usage_is_estimated_with_tiktoken_when_upstream_reports_none(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script(text="one two three four", report_usage=False)
    response = await svc.stub.Complete(pb.CompleteRequest(messages=user("hello there")), metadata=AUTH)
    assert response.usage.input_tokens > 0
    assert response.usage.output_tokens == 4  # cl100k_base: "one two three four"
    expected = (Decimal(response.usage.input_tokens) * Decimal("0.5") + 4 * Decimal("1.5")) / Decimal(10**6)
    assert Decimal(response.cost_usd_exact) == expected


@pytest.mark.asyncio
async def test_pinned_anthropic_tier_through_the_messages_api(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script("large-model", text="Bonjour.", input_tokens=100, output_tokens=10)
    request = pb.CompleteRequest(
        messages=[pb.ChatMessage(role="system", content="Answer in French."), *user("Say hello")],
        tier="large",
        max_tokens=64,
        temperature=0.3,
    )
    response = await svc.stub.Complete(request, metadata=AUTH)
    assert response.content == "Bonjour."
    assert response.decision.tier == "large" and response.decision.reason == "pinned"
    assert Decimal(response.cost_usd_exact) == (100 * Decimal(3) + 10 * Decimal(15)) / Decimal(10**6)
    sent = upstream.requests_for("large-model")[-1]
    assert sent.path == "/v1/messages"
    assert sent.body["system"] == "Answer in French."
    assert sent.body["max_tokens"] == 64 and sent.body["temperature"] == pytest.approx(0.3)


@pytest.mark.asyncio
async def test_stream_sends_decision_then_deltas_then_usage_cost_and_ttft(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script(text="one two three four five", input_tokens=10, output_tokens=5, chunk_delay_s=0.01)
    chunks = [
        c async for c in svc.stub.CompleteStream(pb.CompleteRequest(messages=user("count")), metadata=AUTH)
    ]
    kinds = [c.WhichOneof("body") for c in chunks]
    assert kinds[0] == "decision" and kinds[-1] == "end" and set(kinds[1:-1]) == {"delta"}
    assert "".join(c.delta for c in chunks[1:-1]) == "one two three four five"
    end = chunks[-1].end
    assert (end.usage.input_tokens, end.usage.output_tokens) == (10, 5)
    assert Decimal(end.cost_usd_exact) == (10 * Decimal("0.5") + 5 * Decimal("1.5")) / Decimal(10**6)
    assert 0 < end.latency.ttft_ms < end.latency.total_ms
    assert end.latency.tpot_ms > 0
    assert all(c.request_id == chunks[0].decision.request_id for c in chunks)


@pytest.mark.asyncio
async def test_route_decides_without_calling_a_model(svc: Running, upstream: ScriptedUpstream) -> None:
    decision = await svc.stub.Route(pb.RouteRequest(messages=user("What is 2+2?")), metadata=AUTH)
    assert decision.tier == "small" and decision.model == "small-model" and decision.provider == "openai"
    assert decision.estimated_input_tokens > 0 and decision.estimated_cost_usd > 0
    assert not decision.cache_hit and dict(decision.p_adequate) == {}
    assert upstream.requests == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer wrong-key"),),
        (("authorization", "Basic abc"),),
        (("authorization", "Bearer "),),
    ],
)
async def test_missing_or_unknown_key_is_unauthenticated(svc: Running, metadata: tuple[Any, ...]) -> None:
    for call in (svc.stub.Route, svc.stub.Complete):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(pb.CompleteRequest(messages=user("hi")), metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"messages": []}, "messages"),
    ({"messages": [pb.ChatMessage(role="robot", content="x")]}, "messages[0].role"),
    ({"messages": [pb.ChatMessage(role="user", content="   ")]}, "messages[0].content"),
    ({"messages": [pb.ChatMessage(role="user", content="x" * 200_001)]}, "messages[0].content"),
    (
        {
            "messages": [
                pb.ChatMessage(role="user", content="hi"),
                pb.ChatMessage(role="assistant", content="yo"),
            ]
        },
        "messages[1].role",
    ),
    ({"tier": "gigantic"}, "tier"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": 4096}, "max_tokens"),
    ({"tier": "small", "max_tokens": 1024}, "max_tokens"),
    ({"quality_target": 1.5}, "quality_target"),
    ({"quality_target": -0.01}, "quality_target"),
    ({"latency_budget_ms": -1}, "latency_budget_ms"),
    ({"max_age_s": -1}, "max_age_s"),
    ({"stop": [""]}, "stop[0]"),
    ({"feature": "f" * 300}, "feature"),
    ({"metadata": {f"k{i}": "v" for i in range(65)}}, "metadata"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("fields", "field_name"), INVALID)
async def test_each_invalid_field_is_named(
    svc: Running, upstream: ScriptedUpstream, fields: dict[str, Any], field_name: str
) -> None:
    request = pb.CompleteRequest(**{"messages": user("hello"), **fields})
    for call in (svc.stub.Complete, svc.stub.Route):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request, metadata=AUTH)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(field_name + ":"), caught.value.details()
    assert upstream.requests == []


@pytest.mark.asyncio
async def test_undecodable_request_is_invalid_argument_and_server_stays_up(svc: Running) -> None:
    # Field 1 (messages) holding a ChatMessage whose role is invalid UTF-8.
    bad_message = b"\x0a\x02\xff\xfe"
    raw = b"\x0a" + bytes([len(bad_message)]) + bad_message
    call = svc.channel.unary_unary("/tierwise.v1.Router/Complete")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(raw, metadata=AUTH)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "messages[0].role: is not valid UTF-8"
    decision = await svc.stub.Route(pb.RouteRequest(messages=user("still there?")), metadata=AUTH)
    assert decision.tier


@pytest.mark.asyncio
async def test_dead_upstream_is_unavailable_naming_the_tier(tmp_path: Path) -> None:
    async with ScriptedUpstream() as closed:
        dead_url = closed.base_url
    data = config_dict(tmp_path / "var", dead_url + "/v1", dead_url)
    async with running_server(build_config(data)) as svc:
        details = await unavailable_details(svc, pb.CompleteRequest(messages=user("hi"), tier="small"))
        assert "tier 'small'" in details and "connection" in details
        details = await unavailable_details(svc, pb.CompleteRequest(messages=user("hi")))
        assert "tier 'small'" in details and "tier 'large'" in details


@pytest.mark.asyncio
async def test_failing_cheap_tier_falls_back_to_the_next_tier(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script("small-model", status=500)
    upstream.script("large-model", text="from the large tier", input_tokens=5, output_tokens=4)
    response = await svc.stub.Complete(pb.CompleteRequest(messages=user("hi")), metadata=AUTH)
    assert response.content == "from the large tier"
    assert response.decision.tier == "large" and response.decision.reason == "fallback"
    # server errors are retried once on the same tier (resilience.retry.server_error), then it falls back
    assert [(a.tier, a.ok, a.error_type, a.http_status) for a in response.attempts] == [
        ("small", False, "server_error", 500),
        ("small", False, "server_error", 500),
        ("large", True, "", 0),
    ]
    assert Decimal(response.cost_usd_exact) == (5 * Decimal(3) + 4 * Decimal(15)) / Decimal(10**6)


@pytest.mark.asyncio
async def test_upstream_client_error_is_not_retried_and_names_the_tier(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script("small-model", status=400, error_message="context too long")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Complete(pb.CompleteRequest(messages=user("hi")), metadata=AUTH)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tier 'small'" in caught.value.details() and "context too long" in caught.value.details()
    assert upstream.requests_for("large-model") == []


@pytest.mark.asyncio
async def test_stream_failing_before_first_token_falls_back(svc: Running, upstream: ScriptedUpstream) -> None:
    upstream.script("small-model", status=503)
    upstream.script("large-model", text="fallback text")
    chunks = [c async for c in svc.stub.CompleteStream(pb.CompleteRequest(messages=user("x")), metadata=AUTH)]
    assert "".join(c.delta for c in chunks) == "fallback text"
    assert [a.tier for a in chunks[-1].end.attempts] == ["small", "large"]


@pytest.mark.asyncio
async def test_stream_failing_mid_way_reports_the_error(svc: Running, upstream: ScriptedUpstream) -> None:
    upstream.script("small-model", text="a b c d e f", drop_after=2)
    received: list[pb.CompleteChunk] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in svc.stub.CompleteStream(pb.CompleteRequest(messages=user("x")), metadata=AUTH):
            received.append(chunk)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "mid-stream" in caught.value.details()
    assert [c.WhichOneof("body") for c in received] == ["decision", "delta", "delta"]


@pytest.mark.asyncio
async def test_feedback_is_stored_durably_for_the_callers_own_request(svc: Running, tmp_path: Path) -> None:
    response = await svc.stub.Complete(pb.CompleteRequest(messages=user("hi")), metadata=AUTH)
    ack = await svc.stub.Feedback(
        pb.FeedbackRequest(
            request_id=response.request_id, score=0.25, source=pb.FEEDBACK_SOURCE_HUMAN, comment="meh"
        ),
        metadata=AUTH,
    )
    assert ack.feedback_id and ack.request_id == response.request_id
    reopened = SqliteFeedbackStore(tmp_path / "var" / "feedback.sqlite3")
    stored = await reopened.for_request("acme", response.request_id)
    await reopened.aclose()
    assert [(f.score, f.source, f.comment) for f in stored] == [(0.25, "human", "meh")]


@pytest.mark.asyncio
async def test_feedback_on_an_unknown_or_foreign_request_is_not_found(svc: Running) -> None:
    response = await svc.stub.Complete(pb.CompleteRequest(messages=user("hi")), metadata=AUTH)
    for request_id, auth in (("0" * 32, AUTH), (response.request_id, OTHER_AUTH)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await svc.stub.Feedback(
                pb.FeedbackRequest(request_id=request_id, score=1.0, source=pb.FEEDBACK_SOURCE_APP),
                metadata=auth,
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details().startswith("request_id:")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"request_id": "", "score": 0.5, "source": 1}, "request_id"),
        ({"request_id": "r", "score": 1.5, "source": 1}, "score"),
        ({"request_id": "r", "score": float("nan"), "source": 1}, "score"),
        ({"request_id": "r", "score": 0.5, "source": 0}, "source"),
        ({"request_id": "r", "score": 0.5, "source": 9}, "source"),
    ],
)
async def test_invalid_feedback_names_the_field(
    svc: Running, fields: dict[str, Any], field_name: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Feedback(pb.FeedbackRequest(**fields), metadata=AUTH)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field_name + ":")


@pytest.mark.asyncio
async def test_health_serving_and_reflection_lists_the_router(svc: Running) -> None:
    health = health_pb2_grpc.HealthStub(svc.channel)
    for service in ("", "tierwise.v1.Router"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(svc.channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name async for r in responses for s in r.list_services_response.service}
    assert "tierwise.v1.Router" in names and "grpc.health.v1.Health" in names


@pytest.mark.asyncio
async def test_graceful_shutdown_finishes_in_flight_calls(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    upstream.script(text="slow answer", latency_s=0.5)
    config = build_config(config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url))
    async with running_server(config) as svc:
        call = asyncio.ensure_future(
            svc.stub.Complete(pb.CompleteRequest(messages=user("hi")), metadata=AUTH)
        )

        async def reached_upstream() -> None:
            while not upstream.requests:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(reached_upstream(), timeout=10)
        await svc.server.stop(grace_s=5)
        response = await call
        assert response.content == "slow answer"


@pytest.mark.asyncio
@pytest.mark.parametrize("log_prompts", [False, True])
async def test_prompt_text_reaches_logs_only_when_configured(
    upstream: ScriptedUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture, log_prompts: bool
) -> None:
    caplog.set_level(logging.DEBUG, logger="tierwise")
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    data["server"]["log_prompts"] = log_prompts
    async with running_server(build_config(data)) as svc:
        await svc.stub.Complete(pb.CompleteRequest(messages=user("secret plan xyzzy")), metadata=AUTH)
    records = [vars(r) for r in caplog.records]
    assert any(r["msg"] == "completed" and r.get("request_id") for r in records)
    assert any("xyzzy" in str(r) for r in records) == log_prompts
