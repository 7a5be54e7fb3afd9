"""Budget usage Redis loses is rebuilt from the spend ledger, and the fail mode is closed for hard
limits unless configured open: managers on a real redis-server over a real SQLite spend ledger
(and a PostgreSQL one nobody listens for, for the ledger's own outage)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.budget_support import START, Clock, make_manager
from tests.redis_server import RedisServer, redis_server_factory
from tests.test_ledger import spend
from tierwise.router.budgets.errors import BudgetStoreUnavailable
from tierwise.router.budgets.manager import BudgetManager
from tierwise.router.budgets.redis_store import RedisBudgetStore
from tierwise.router.errors import BudgetExhausted
from tierwise.router.ledger.budget_usage import LedgerBudgetUsage
from tierwise.router.ledger.postgres_sink import PostgresSpendSink
from tierwise.router.ledger.spend_ledger import SpendLedger, SpendSink
from tierwise.router.ledger.sqlite_sink import SqliteSpendSink
from tierwise.training.process import free_port

__all__ = ["redis_server_factory"]

D = Decimal
DAY = {"tenant": "acme", "window": "day", "usd": "1.00"}
CHAT = {"tenant": "acme", "feature": "chat", "window": "day", "tokens": 1000}


@pytest.fixture
def redis(redis_server_factory: Callable[[], RedisServer]) -> RedisServer:
    return redis_server_factory()


@pytest_asyncio.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SpendLedger]:
    async with started_ledger(tmp_path / "journal", SqliteSpendSink(tmp_path / "spend.sqlite3")) as opened:
        yield opened


@contextlib.asynccontextmanager
async def started_ledger(directory: Path, sink: SpendSink) -> AsyncIterator[SpendLedger]:
    ledger = SpendLedger(directory, sink, flush_interval_s=0.05)
    await ledger.start()
    try:
        yield ledger
    finally:
        await ledger.aclose()


def replica(redis: RedisServer, clock: Clock, ledger: SpendLedger | None, **settings: Any) -> BudgetManager:
    budgets = settings.pop("budgets", [DAY, CHAT])
    source = None if ledger is None else LedgerBudgetUsage(ledger, flush_timeout_s=2.0)
    store = RedisBudgetStore.from_url(redis.url, timeout_s=2.0)
    return make_manager(store, budgets, clock, usage_source=source, **settings)


async def outage_then_empty_restart(
    redis: RedisServer, clock: Clock, replicas: list[BudgetManager], key: str = ""
) -> None:
    """Redis dies (each replica's next request, made with ``key``, is refused: fail mode closed) and
    comes back empty."""
    redis.kill()
    for manager in replicas:
        with pytest.raises(BudgetStoreUnavailable, match="fail_mode is closed"):
            await manager.reserve("acme", "chat", D("0.01"), 1, key=key)
    redis.start()  # same port, no data
    clock.advance(1)  # past the first backoff


def record_today(
    ledger: SpendLedger, n: int, usd: str, tokens: int, feature: str = "chat", api_key: str = ""
) -> None:
    """``n`` requests of acme this period (and one yesterday, which must not count), made with
    ``api_key`` (its requests are numbered apart from other keys')."""
    first = 0 if not api_key else 10_000 * (1 + sum(map(ord, api_key)))
    for i in range(n):
        ts = (START - timedelta(hours=1)).timestamp() + i
        ledger.record(
            spend(
                first + i,
                ts=ts,
                feature=feature,
                cost_usd=D(usd),
                input_tokens=tokens,
                output_tokens=0,
                api_key=api_key,
            )
        )
    yesterday = (START - timedelta(days=1)).timestamp()
    ledger.record(spend(first + 999, ts=yesterday, feature=feature, cost_usd=D(5), input_tokens=10**6))


@pytest.mark.asyncio
async def test_redis_restarted_empty_rebuilds_usage_from_the_ledger(
    redis: RedisServer, ledger: SpendLedger, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    manager = replica(redis, clock, ledger)
    first = await manager.reserve("acme", "chat", D("0.2"), 100)
    await manager.settle(first, D("0.2"), 100)
    record_today(ledger, 4, "0.2", 200)  # the ledger holds 0.8 USD, 800 tokens of acme/chat today

    await outage_then_empty_restart(redis, clock, [manager])
    with (
        caplog.at_level(logging.WARNING, logger="tierwise.budgets"),
        pytest.raises(BudgetExhausted) as refused,
    ):
        await manager.reserve("acme", "chat", D("0.3"), 10)
    assert "acme/*/day" in refused.value.message and "used 0.8" in refused.value.message
    assert "usage rebuilt from the spend ledger (SqliteSpendSink): 0.8 USD, 800 tokens" in caplog.text
    # Token budget of the feature: 800 used, 200 left.
    with pytest.raises(BudgetExhausted, match="acme/chat/day"):
        await manager.reserve("acme", "chat", D("0.1"), 201)
    fits = await manager.reserve("acme", "chat", D("0.2"), 200)
    assert fits.enforced
    usage = {u.budget: u for u in await manager.usage()}
    assert usage["acme/*/day"].used_usd == D("0.8") and usage["acme/chat/day"].used_tokens == 800
    await manager.aclose()


@pytest.mark.asyncio
async def test_two_replicas_rebuild_once_and_see_one_value(
    redis: RedisServer, ledger: SpendLedger, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    replicas = [replica(redis, clock, ledger) for _ in range(2)]
    record_today(ledger, 3, "0.25", 100)
    await outage_then_empty_restart(redis, clock, replicas)
    with caplog.at_level(logging.WARNING, logger="tierwise.budgets"):
        # 20 requests of 0.05 USD at once, half on each replica: 0.25 USD is left.
        results = await asyncio.gather(
            *(replicas[i % 2].reserve("acme", "chat", D("0.05"), 1) for i in range(20)),
            return_exceptions=True,
        )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    assert len(admitted) == 5 and all(isinstance(r, BudgetExhausted) for r in results if r not in admitted)
    assert caplog.text.count("budget acme/*/day, period 2025-03-04: usage rebuilt") == 1
    views = [{u.budget: u.used_usd + u.in_flight_usd for u in await m.usage()} for m in replicas]
    assert views[0] == views[1] and views[0]["acme/*/day"] == D("1.00")
    for manager in replicas:
        await manager.aclose()


@pytest.mark.asyncio
async def test_a_seed_never_lowers_usage_the_store_already_counts(
    redis: RedisServer, ledger: SpendLedger
) -> None:
    """Spend settled on Redis before its period was seeded (a store from before the marks, or a
    settle that reached the emptied store first) is kept; the ledger only raises it."""
    clock = Clock()
    manager = replica(redis, clock, None, budgets=[DAY])
    reservation = await manager.reserve("acme", "chat", D("0.1"), 1)
    await manager.settle(reservation, D("0.7"), 1)  # Redis: 0.7 used
    client = RedisBudgetStore.from_url(redis.url)._client
    for key in await client.keys("tw:budget:*:state"):
        await client.hdel(key, "seeded")  # as left by a version without marks
    await client.aclose()
    record_today(ledger, 1, "0.5", 1)  # the ledger knows less than Redis
    rebuilt = replica(redis, clock, ledger, budgets=[DAY])
    with pytest.raises(BudgetExhausted, match=r"used 0\.7"):
        await rebuilt.reserve("acme", "chat", D("0.4"), 1)
    await manager.aclose()
    await rebuilt.aclose()


@pytest.mark.asyncio
async def test_ledger_unreachable_during_a_rebuild_takes_the_fail_mode(
    redis: RedisServer, tmp_path: Path
) -> None:
    dead = f"host=127.0.0.1 port={free_port()} user=postgres dbname=nobody"
    async with started_ledger(tmp_path / "journal", PostgresSpendSink(dead, connect_timeout_s=1)) as down:
        clock = Clock()
        globex = {"tenant": "globex", "window": "day", "usd": "1"}
        seeded_before = replica(redis, clock, None, budgets=[globex])
        assert (await seeded_before.reserve("globex", "", D("0.1"), 1)).enforced
        await seeded_before.aclose()

        closed = replica(redis, clock, down, budgets=[DAY, globex])
        errors: list[str] = []
        closed.add_store_error_listener(lambda operation, _: errors.append(operation))
        with pytest.raises(BudgetStoreUnavailable) as refused:
            await closed.reserve("acme", "", D("0.1"), 1)
        assert "usage for 2025-03-04 was lost by the budget store" in refused.value.message
        assert "could not be rebuilt from the spend ledger (PostgresSpendSink)" in refused.value.message
        assert "fail_mode is closed for budget acme/*/day" in refused.value.message
        # Redis itself is fine: a period it still holds is enforced as usual ...
        assert (await closed.reserve("globex", "", D("0.1"), 1)).enforced
        # ... and the ledger is not asked again before its backoff.
        with pytest.raises(BudgetStoreUnavailable, match="backing off after a failure"):
            await closed.reserve("acme", "", D("0.1"), 1)
        assert errors == ["rebuild", "rebuild"]
        await closed.aclose()

        opened = replica(redis, clock, down, budgets=[{**DAY, "fail_mode": "open"}])
        assert not (await opened.reserve("acme", "", D("0.1"), 1)).enforced
        await opened.aclose()


@pytest.mark.asyncio
async def test_fail_mode_is_closed_for_hard_limits_open_where_configured_and_counted(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    budgets = [
        DAY,  # hard limit, no fail_mode: the default, closed
        {"tenant": "globex", "window": "day", "usd": "1", "fail_mode": "open"},
        {"tenant": "initech", "window": "day", "soft_usd": "1"},  # soft only: nothing to refuse
    ]
    manager = replica(redis, Clock(), None, budgets=budgets)
    decisions: list[str] = []
    manager.add_fail_mode_listener(decisions.append)
    redis.kill()
    with caplog.at_level(logging.WARNING, logger="tierwise.budgets"):
        with pytest.raises(BudgetStoreUnavailable, match="fail_mode is closed for budget acme/\\*/day"):
            await manager.reserve("acme", "", D("0.1"), 1)
        assert not (await manager.reserve("globex", "", D("0.1"), 1)).enforced
        assert not (await manager.reserve("initech", "", D("0.1"), 1)).enforced
    assert decisions == ["refused", "admitted", "admitted"]
    assert "tenant 'acme''s request refused by the budget fail mode (closed: ['acme/*/day'])" in caplog.text
    assert "tenant 'globex''s request admitted" in caplog.text
    await manager.aclose()

    everything_open = replica(redis, Clock(), None, budgets=budgets, fail_mode="open")
    assert not (await everything_open.reserve("acme", "", D("0.1"), 1)).enforced
    await everything_open.aclose()
