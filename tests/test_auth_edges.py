"""Authentication at its edges: duplicate credentials, and failed attempts that are counted,
logged (with the address, never the key) and throttled per source address."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio

from tests.harness import AUTH, OTHER_AUTH, Running, build_config, config_dict, rpc_error, running_server
from tests.upstream import ScriptedUpstream
from tierwise.training.process import free_port
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

MAX_FAILURES = 3
WRONG_KEY = "wrong-key-s3cr3t"
WRONG = (("authorization", f"Bearer {WRONG_KEY}"),)
ROUTE = pb.RouteRequest(messages=[pb.ChatMessage(role="user", content="hi")])


@pytest_asyncio.fixture
async def svc(upstream: ScriptedUpstream, tmp_path: Path) -> AsyncIterator[Running]:
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    data["auth"]["throttle"] = {"max_failures": MAX_FAILURES, "window_s": 3600}
    async with running_server(build_config(data)) as running:
        yield running


def failures(svc: Running, reason: str) -> float:
    registry = svc.server.service.accounting.metrics.registry
    value = registry.get_sample_value("tierwise_auth_failures_total", {"reason": reason})
    assert value is not None, f"no tierwise_auth_failures_total series for {reason!r}"
    return value


@pytest.mark.asyncio
async def test_duplicate_authorization_is_refused_even_when_both_keys_are_valid(svc: Running) -> None:
    for metadata in (AUTH + AUTH, AUTH + OTHER_AUTH, WRONG + AUTH):
        error = await rpc_error(svc.stub.Route(ROUTE, metadata=metadata))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == "authorization: 2 entries in the metadata; send exactly one"
    assert failures(svc, "duplicate") == 3


@pytest.mark.asyncio
async def test_failed_attempts_are_counted_and_logged_with_the_address_not_the_key(
    svc: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tierwise.auth")
    for metadata in (WRONG, (), (("authorization", f"Basic {WRONG_KEY}"),)):
        error = await rpc_error(svc.stub.Route(ROUTE, metadata=metadata))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (failures(svc, "unknown_key"), failures(svc, "missing"), failures(svc, "malformed")) == (1, 1, 1)
    failed = [r for r in caplog.records if r.getMessage() == "authentication failed"]
    assert [(getattr(r, "source", None), getattr(r, "reason", None)) for r in failed] == [
        ("127.0.0.1", "unknown_key"),
        ("127.0.0.1", "missing"),
        ("127.0.0.1", "malformed"),
    ]
    assert all(WRONG_KEY not in repr(vars(r)) for r in caplog.records)


@pytest.mark.asyncio
async def test_a_source_that_keeps_failing_is_refused_without_a_key_check(
    svc: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tierwise.auth")
    assert (await svc.stub.Route(ROUTE, metadata=AUTH)).tier  # a success counts for nothing
    for _ in range(MAX_FAILURES):
        error = await rpc_error(svc.stub.Route(ROUTE, metadata=WRONG))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    admin = pb_grpc.AdminStub(svc.channel)
    # Now even the right key is refused: answering it would tell a guesser that it guessed right.
    for call in (
        svc.stub.Route(ROUTE, metadata=AUTH),
        svc.stub.Complete(pb.CompleteRequest(messages=ROUTE.messages), metadata=WRONG),
        admin.BudgetStatus(pb.BudgetStatusRequest(), metadata=AUTH),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (error.details() or "").startswith("authorization: too many failed attempts"), error.details()
    assert (failures(svc, "unknown_key"), failures(svc, "throttled")) == (MAX_FAILURES, 3)
    messages = [r.getMessage() for r in caplog.records if r.name == "tierwise.auth"]
    # One line per failure until the throttle starts, one saying it started, none per refusal.
    assert messages == ["authentication failed"] * MAX_FAILURES + ["authentication throttled"]


@pytest.mark.asyncio
async def test_throttling_can_be_turned_off(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    data["auth"]["throttle"] = {"max_failures": 0}
    async with running_server(build_config(data)) as svc:
        for _ in range(30):
            error = await rpc_error(svc.stub.Route(ROUTE, metadata=WRONG))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert (await svc.stub.Route(ROUTE, metadata=AUTH)).tier
        assert failures(svc, "unknown_key") == 30


@pytest.mark.asyncio
async def test_the_dashboard_shares_the_throttle_and_metrics_show_the_counter(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    data["auth"]["throttle"] = {"max_failures": MAX_FAILURES, "window_s": 3600}
    data["server"]["metrics_port"] = free_port()
    async with running_server(build_config(data)) as svc, httpx.AsyncClient() as client:
        base = f"http://127.0.0.1:{svc.server.metrics_port}"
        for _ in range(MAX_FAILURES - 1):
            wrong = await client.get(f"{base}/dashboard", auth=("x", WRONG_KEY))
            assert wrong.status_code == 401
        # The last allowed failure over gRPC: the same address, so the dashboard refuses next.
        await rpc_error(svc.stub.Route(ROUTE, metadata=WRONG))
        refused = await client.get(f"{base}/dashboard", headers=dict(AUTH))
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert "too many failed attempts" in refused.text
        scraped = (await client.get(f"{base}/metrics")).text
        assert f'tierwise_auth_failures_total{{reason="unknown_key"}} {MAX_FAILURES:.1f}' in scraped
        assert 'tierwise_auth_failures_total{reason="throttled"} 1.0' in scraped
