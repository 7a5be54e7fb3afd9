"""Issue 21's shared-mode budget that forgot: two real gRPC replicas share one real redis-server
and one real PostgreSQL ledger; a tenant at 80 % of its hard limit lives through a Redis outage and
an empty restart.

The bound checked: spend <= limit + what the fail mode admitted unmetered during the outage (none
when it is closed, the default) + what was still in a replica's ledger journal at the rebuild
(the test waits until the ledger holds every answered request, so that term is zero here). Every
answer costs less than its estimate, so reservations in flight add nothing either.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import pytest_asyncio

from tests.harness import Running, build_config, config_dict, running_server
from tests.redis_server import RedisServer, redis_server_factory
from tests.test_budgets_servers import complete
from tests.test_ledger import until
from tests.test_ledger_postgres import Database, database
from tests.upstream import ScriptedUpstream
from tierwise.v1 import tierwise_pb2 as pb

__all__ = ["database", "redis_server_factory"]

LIMIT = Decimal("0.002")
BEFORE_OUTAGE = 20  # 20 x 0.000081 USD: 81 % of the limit
DURING_OUTAGE = 20


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as scripted:
        # 0.000081 USD an answer, below its estimate (max_tokens 100 at the small tier's price).
        scripted.script(text="ok", input_tokens=12, output_tokens=50)
        yield scripted


Replicas = Callable[[RedisServer, dict[str, Any]], contextlib.AbstractAsyncContextManager[list[Running]]]


@pytest.fixture
def replicas(tmp_path: Path, upstream: ScriptedUpstream, database: Database) -> Replicas:
    database.create()

    @contextlib.asynccontextmanager
    async def start(redis: RedisServer, budget_store: dict[str, Any]) -> AsyncIterator[list[Running]]:
        async with contextlib.AsyncExitStack() as stack:
            servers = []
            for name in ("a", "b"):
                data = config_dict(tmp_path / name, upstream.openai_url, upstream.base_url)
                data["budgets"] = [{"tenant": "acme", "window": "day", "usd": str(LIMIT)}]
                data["store"] = {"kind": "redis", "url": redis.url, "path": str(tmp_path / name)}
                data["budget_store"] = {
                    "redis_timeout_s": 1.0,
                    "reconnect_min_s": 0.1,
                    "reconnect_max_s": 0.2,
                    **budget_store,
                }
                data["ledger"] = {"postgres_dsn": database.dsn, "flush_interval_s": 0.05}
                servers.append(await stack.enter_async_context(running_server(build_config(data))))
            yield servers

    return start


def ledger_requests(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('tierwise_spend')").fetchone() == (None,):
            return 0
        row = conn.execute("SELECT COUNT(*) FROM tierwise_spend WHERE cost_usd > 0").fetchone()
        return int(row[0]) if row else 0


async def calls(servers: list[Running], n: int) -> list[pb.CompleteResponse | grpc.aio.AioRpcError]:
    """``n`` calls one after another, alternating between the replicas."""
    return [await complete(servers[i % len(servers)]) for i in range(n)]


def answered(results: list[pb.CompleteResponse | grpc.aio.AioRpcError]) -> list[pb.CompleteResponse]:
    return [r for r in results if isinstance(r, pb.CompleteResponse)]


def cost(results: list[pb.CompleteResponse | grpc.aio.AioRpcError]) -> Decimal:
    return sum((Decimal(r.cost_usd_exact) for r in answered(results)), Decimal(0))


def counted(svc: Running, decision: str) -> float:
    registry = svc.server.service.accounting.metrics.registry
    return registry.get_sample_value("tierwise_budget_fail_mode_total", {"decision": decision}) or 0.0


async def through_outage(
    servers: list[Running], redis: RedisServer, dsn: str
) -> tuple[Decimal, list[pb.CompleteResponse | grpc.aio.AioRpcError]]:
    """80 % of the limit, then Redis down for 20 calls, then back empty; returns the spend before the
    restart and the outage's results."""
    before = await calls(servers, BEFORE_OUTAGE)
    assert len(answered(before)) == BEFORE_OUTAGE
    redis.kill()
    during = await calls(servers, DURING_OUTAGE)
    spent = cost(before) + cost(during)
    # Every answered request is in the ledger (the journal term of the bound is zero).
    await until(lambda: ledger_requests(dsn) == len(answered(before)) + len(answered(during)))
    redis.start()  # same port, no data
    await asyncio.sleep(0.3)  # past the replicas' backoff (at most reconnect_max_s)
    return spent, during


@pytest.mark.asyncio
async def test_default_fail_mode_refuses_during_the_outage_and_usage_is_rebuilt_after(
    replicas: Replicas, redis_server_factory: Callable[[], RedisServer], database: Database
) -> None:
    redis = redis_server_factory()
    async with replicas(redis, {}) as servers:
        spent, during = await through_outage(servers, redis, database.dsn)
        assert answered(during) == []  # closed: the default for a hard limit
        for error in during:
            assert isinstance(error, grpc.aio.AioRpcError)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            # The tenant learns the store is down and why it is refused, not where the store lives.
            details = error.details() or ""
            assert "the budget store is unavailable; fail_mode is closed for budget" in details
            assert str(redis.port) not in details and "127.0.0.1" not in details
        assert [counted(svc, "refused") for svc in servers] == [DURING_OUTAGE / 2] * 2

        after = await calls(servers, 60)
        spent += cost(after)
        assert spent <= LIMIT, f"spent {spent} USD against a {LIMIT} USD limit"
        assert 0 < len(answered(after)) < 10  # the 19 % left, then refusals
        refused = [r for r in after if isinstance(r, grpc.aio.AioRpcError)]
        assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        # Both replicas read the one rebuilt total.
        views = [(await svc.server.service.budgets.usage())[0].used_usd for svc in servers]
        assert views == [spent, spent]


@pytest.mark.asyncio
async def test_fail_open_where_configured_counts_the_outage_spend_after_the_restart(
    replicas: Replicas, redis_server_factory: Callable[[], RedisServer], database: Database
) -> None:
    redis = redis_server_factory()
    async with replicas(redis, {"fail_mode": "open"}) as servers:
        spent, during = await through_outage(servers, redis, database.dsn)
        assert len(answered(during)) == DURING_OUTAGE  # admitted unmetered
        assert spent > LIMIT  # the outage's price where budgets are configured to fail open

        after = await calls(servers, 20)
        assert answered(after) == [], "the ledger's spend past the limit was forgotten"
        for error in after:
            assert isinstance(error, grpc.aio.AioRpcError)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        views = [(await svc.server.service.budgets.usage())[0].used_usd for svc in servers]
        assert views == [spent, spent]
        assert [counted(svc, "admitted") for svc in servers] == [DURING_OUTAGE / 2] * 2
