"""Upstream faults and budgets through the real server: the request is still answered by a
healthy tier, within its deadline, or refused with a status that says why."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.harness import AUTH, OTHER_AUTH, build_config, config_dict, running_server, unavailable_details
from tests.upstream import ScriptedUpstream
from tierwise.router.outcome import Attempt
from tierwise.router.upstream_errors import exhausted
from tierwise.v1 import tierwise_pb2 as pb


def user(text: str) -> list[pb.ChatMessage]:
    return [pb.ChatMessage(role="user", content=text)]


def fault_config(tmp_path: Path, upstream: ScriptedUpstream, **sections: Any) -> dict[str, Any]:
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url, **sections)
    data["tiers"][0]["timeout_s"] = 0.5
    return data


@pytest.mark.asyncio
async def test_hanging_cheap_tier_is_answered_by_the_next_within_the_deadline(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    upstream.script("small-model", hang=True)
    upstream.script("large-model", text="rescued")
    async with running_server(build_config(fault_config(tmp_path, upstream))) as svc:
        t0 = time.monotonic()
        response = await svc.stub.Complete(pb.CompleteRequest(messages=user("hi")), metadata=AUTH, timeout=5)
        assert time.monotonic() - t0 < 5
    assert response.content == "rescued" and response.decision.reason == "fallback"
    assert [(a.tier, a.error_type) for a in response.attempts] == [("small", "timeout"), ("large", "")]


@pytest.mark.asyncio
async def test_deadline_is_propagated_and_reported(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    upstream.script(hang=True)
    data = fault_config(tmp_path, upstream)
    data["tiers"][0]["timeout_s"] = 30
    data["tiers"][1]["timeout_s"] = 30
    async with running_server(build_config(data)) as svc:
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await svc.stub.Complete(pb.CompleteRequest(messages=user("hi")), metadata=AUTH, timeout=1.0)
        assert time.monotonic() - t0 < 5
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.asyncio
async def test_rate_limited_tier_is_retried_after_retry_after_then_falls_back(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    upstream.script("small-model", status=429, retry_after="0.05")
    upstream.script("large-model", text="ok")
    async with running_server(build_config(fault_config(tmp_path, upstream))) as svc:
        response = await svc.stub.Complete(pb.CompleteRequest(messages=user("hi")), metadata=AUTH, timeout=10)
    errors = [(a.tier, a.error_type, a.http_status) for a in response.attempts]
    assert errors == [("small", "rate_limited", 429)] * 3 + [("large", "", 0)]
    assert response.content == "ok"


@pytest.mark.asyncio
async def test_breaker_opens_and_the_open_tier_is_skipped(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    upstream.script("small-model", status=503)
    upstream.script("large-model", text="healthy")
    resilience = {
        "breaker": {"window_calls": 4, "min_calls": 4, "open_s": 3600},
        "retry": {"max_attempts": 1},
    }
    async with running_server(build_config(fault_config(tmp_path, upstream, resilience=resilience))) as svc:
        for _ in range(4):
            response = await svc.stub.Complete(pb.CompleteRequest(messages=user("hi")), metadata=AUTH)
            assert response.content == "healthy"
        calls_before = len(upstream.requests_for("small-model"))
        response = await svc.stub.Complete(pb.CompleteRequest(messages=user("hi")), metadata=AUTH)
        assert response.content == "healthy"
        # The open circuit takes the cheap tier out of the candidates: the router chose the healthy one.
        assert response.decision.tier == "large"
        assert len(upstream.requests_for("small-model")) == calls_before
        decision = await svc.stub.Route(pb.RouteRequest(messages=user("hi")), metadata=AUTH)
        assert decision.tier == "large"
        details = await unavailable_details(svc, pb.CompleteRequest(messages=user("hi"), tier="small"))
        assert "circuit" in details and "'small'" in details


@pytest.mark.asyncio
async def test_with_any_one_tier_healthy_every_request_is_answered(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    upstream.script("small-model", status=500)
    upstream.script("large-model", text="fine")
    async with running_server(build_config(fault_config(tmp_path, upstream))) as svc:
        answers = [
            await svc.stub.Complete(pb.CompleteRequest(messages=user(f"q{i}")), metadata=AUTH)
            for i in range(30)
        ]
    assert all(a.content == "fine" for a in answers)


@pytest.mark.asyncio
async def test_hard_budget_rejects_naming_the_budget_and_its_reset(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    upstream.script(text="x", input_tokens=100_000, output_tokens=0)
    budgets = [{"tenant": "acme", "window": "day", "usd": "0.06"}]
    async with running_server(build_config(fault_config(tmp_path, upstream, budgets=budgets))) as svc:
        # Each call really costs 100k input tokens at 0.5/Mtok = 0.05 USD, far above its estimate: the
        # second is admitted (0.05 spent + a small estimate < 0.06), the third is not.
        for _ in range(2):
            await svc.stub.Complete(pb.CompleteRequest(messages=user("hi"), tier="small"), metadata=AUTH)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await svc.stub.Complete(pb.CompleteRequest(messages=user("hi"), tier="small"), metadata=AUTH)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "acme" in caught.value.details() and "resets at" in caught.value.details()
        # Another tenant has no budget and is unaffected.
        response = await svc.stub.Complete(pb.CompleteRequest(messages=user("hi")), metadata=OTHER_AUTH)
        assert response.content == "x"


@pytest.mark.asyncio
async def test_soft_budget_degrades_to_the_capped_tier(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    upstream.script(text="y", input_tokens=10_000, output_tokens=0)
    budgets = [
        {
            "tenant": "acme",
            "window": "month",
            "usd": "100",
            # Over the large tier's worst case ($0.0307: 2048 output tokens at $15/M), which the
            # first request reserves; under what the first answer costs ($0.03) plus any estimate.
            "soft_usd": "0.032",
            "degrade": {"max_tier": "small"},
        }
    ]
    async with running_server(build_config(fault_config(tmp_path, upstream, budgets=budgets))) as svc:
        first = await svc.stub.Complete(pb.CompleteRequest(messages=user("hi"), tier="large"), metadata=AUTH)
        assert first.decision.tier == "large"
        second = await svc.stub.Complete(pb.CompleteRequest(messages=user("hi"), tier="large"), metadata=AUTH)
        assert second.decision.tier == "small" and second.decision.reason == "budget-degrade"


def test_a_chain_that_ends_with_the_deadline_spent_is_deadline_exceeded() -> None:
    """The last tier of a chain is given what is left of the deadline: when it times out with it,
    the caller's deadline ended the request, whichever of the two timers fired first."""
    attempts = [Attempt("small", "small-model", False, 500.0, "timeout", "no response within 0.5s")]
    assert exhausted(attempts, 0.004).code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert exhausted(attempts, -0.01).code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert exhausted(attempts, 0.4).code is grpc.StatusCode.UNAVAILABLE  # time was left: tiers are down
    assert exhausted(attempts).code is grpc.StatusCode.UNAVAILABLE  # no deadline
