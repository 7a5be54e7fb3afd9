"""Invariant 2 end to end: a 64-way burst of Complete calls against a small hard budget, through
real gRPC servers, overspends by no more than the reservations in flight.

Embedded: one server on its SQLite budget store. Shared: two servers on one real redis-server,
the burst split between them. The upstream holds every answer long enough for the whole burst to
reserve before any request settles, and every answer costs more than its estimate (the worst case
for a reserve-then-settle budget), so the bound is tight and exact:

    spent == sum(cost of the admitted) <= limit - sum(estimates) + sum(costs)

i.e. the admitted estimates fit the limit, and the overrun is exactly what those in-flight
requests cost beyond what they reserved.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.harness import AUTH, Running, build_config, config_dict, running_server
from tests.redis_server import RedisServer, redis_server_factory
from tests.upstream import ScriptedUpstream
from tierwise.v1 import tierwise_pb2 as pb

__all__ = ["redis_server_factory"]

Metadata = tuple[tuple[str, str], ...]
BURST = 64
LIMIT = Decimal("0.002")
MAX_TOKENS = 100  # the estimate assumes at most this many output tokens ...
OUTPUT_TOKENS = 1000  # ... and the upstream reports ten times that


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as scripted:
        scripted.script(text="ok", input_tokens=12, output_tokens=OUTPUT_TOKENS, latency_s=3.0)
        yield scripted


def budget_config(store: Path, upstream: ScriptedUpstream, redis: RedisServer | None) -> dict[str, Any]:
    data = config_dict(store, upstream.openai_url, upstream.base_url)
    data["budgets"] = [{"tenant": "acme", "window": "day", "usd": str(LIMIT)}]
    if redis is not None:
        data["store"] = {"kind": "redis", "url": redis.url, "path": str(store)}
        data["budget_store"] = {"fail_mode": "closed", "redis_timeout_s": 2.0}
    return data


async def complete(svc: Running, auth: Metadata = AUTH) -> pb.CompleteResponse | grpc.aio.AioRpcError:
    request = pb.CompleteRequest(
        messages=[pb.ChatMessage(role="user", content="Summarise the quarterly report.")],
        tier="small",
        max_tokens=MAX_TOKENS,
    )
    try:
        response: pb.CompleteResponse = await svc.stub.Complete(request, metadata=auth, timeout=30)
    except grpc.aio.AioRpcError as exc:
        return exc
    return response


async def burst(
    servers: list[Running], auth: Metadata = AUTH
) -> tuple[list[pb.CompleteResponse], list[grpc.aio.AioRpcError]]:
    results = await asyncio.gather(*(complete(servers[i % len(servers)], auth) for i in range(BURST)))
    answered = [r for r in results if isinstance(r, pb.CompleteResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    return answered, refused


def check_bound(
    answered: list[pb.CompleteResponse], refused: list[grpc.aio.AioRpcError], budget: str = "acme/*/day"
) -> None:
    assert answered and refused, (len(answered), len(refused))
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert budget in (error.details() or "") and "resets" in (error.details() or "")
    estimates = [Decimal(str(r.decision.estimated_cost_usd)) for r in answered]
    costs = [Decimal(r.cost_usd_exact) for r in answered]
    assert all(c > e for c, e in zip(costs, estimates, strict=True))  # each one overran its estimate
    # What was admitted fit the limit; nothing beyond the reservations in flight was spent.
    assert sum(estimates) <= LIMIT < sum(estimates) + estimates[0]
    assert sum(costs) - LIMIT <= sum(c - e for c, e in zip(costs, estimates, strict=True))


async def spent(svc: Running) -> Decimal:
    budgets = svc.server.service.budgets
    [usage] = await budgets.usage()
    assert usage.in_flight_usd == 0  # every admitted request settled
    return usage.used_usd


@pytest.mark.asyncio
async def test_embedded_burst_overspends_at_most_the_reservations_in_flight(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    async with running_server(build_config(budget_config(tmp_path, upstream, None))) as svc:
        answered, refused = await burst([svc])
        check_bound(answered, refused)
        assert await spent(svc) == sum(Decimal(r.cost_usd_exact) for r in answered)


@pytest.mark.asyncio
async def test_two_servers_on_redis_share_one_budget_under_a_burst(
    upstream: ScriptedUpstream, tmp_path: Path, redis_server_factory: Callable[[], RedisServer]
) -> None:
    redis = redis_server_factory()
    async with contextlib.AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(
                running_server(build_config(budget_config(tmp_path / name, upstream, redis)))
            )
            for name in ("a", "b")
        ]
        answered, refused = await burst(servers)
        check_bound(answered, refused)
        # Both replicas took part, and both see the one shared total.
        assert {r.decision.request_id for r in answered} and len(refused) < BURST
        total = sum(Decimal(r.cost_usd_exact) for r in answered)
        assert await spent(servers[0]) == await spent(servers[1]) == total
