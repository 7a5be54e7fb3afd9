"""Shared pieces of the budget tests: an injectable clock, budgets from config dicts, both real stores."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.redis_server import RedisServer, redis_server_factory
from tierwise.router.budgets.alerts import BudgetAlert
from tierwise.router.budgets.manager import BudgetManager
from tierwise.router.budgets.rebuild import UsageSource
from tierwise.router.budgets.redis_store import RedisBudgetStore
from tierwise.router.budgets.sqlite_store import SqliteBudgetStore
from tierwise.router.budgets.store import BudgetStore
from tierwise.router.config import BudgetConfig, BudgetStoreConfig

__all__ = ["Clock", "StoreFactory", "make_manager", "redis_server_factory", "store_factory"]

START = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)


class Clock:
    """Wall time (UTC) and a monotonic clock that move together, only when a test says so."""

    def __init__(self, start: datetime = START) -> None:
        self.wall = start
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds

    def set(self, wall: datetime) -> None:
        self.advance((wall - self.wall).total_seconds())


StoreFactory = Callable[[], BudgetStore]


def make_manager(
    store: BudgetStore,
    budgets: Sequence[dict[str, Any]],
    clock: Clock,
    *,
    tiers: Sequence[str] = ("small", "medium", "large"),
    alerts: list[BudgetAlert] | None = None,
    usage_source: UsageSource | None = None,
    **settings: Any,
) -> BudgetManager:
    manager = BudgetManager(
        [BudgetConfig(**b) for b in budgets],
        store,
        BudgetStoreConfig(**settings),
        tier_order=tiers,
        wall_clock=clock.now,
        clock=clock.monotonic,
        usage_source=usage_source,
    )
    if alerts is not None:
        manager.alerts.add_listener(alerts.append)
    return manager


@pytest_asyncio.fixture(params=["sqlite", "redis"])
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server_factory: Callable[[], RedisServer]
) -> AsyncIterator[StoreFactory]:
    """Opens stores that share one backend: one SQLite file, or one private redis-server."""
    opened: list[BudgetStore] = []
    if request.param == "sqlite":

        def open_store() -> BudgetStore:
            opened.append(SqliteBudgetStore(tmp_path / "budgets.sqlite3"))
            return opened[-1]

    else:
        server = redis_server_factory()

        def open_store() -> BudgetStore:
            opened.append(RedisBudgetStore.from_url(server.url, timeout_s=2.0))
            return opened[-1]

    yield open_store
    for store in opened:
        await store.aclose()
