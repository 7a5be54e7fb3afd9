"""BudgetManager over both real stores: hard and soft limits, settle/release/expiry, alerts, rollover."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import grpc
import pytest

from tests.budget_support import Clock, StoreFactory, make_manager, redis_server_factory, store_factory
from tierwise.router.budgets.alerts import BudgetAlert
from tierwise.router.budgets.manager import DEGRADE_REASON, BudgetManager
from tierwise.router.errors import BudgetExhausted

__all__ = ["redis_server_factory", "store_factory"]

D = Decimal
DAY: dict[str, Any] = {"tenant": "acme", "window": "day", "usd": "1.00"}


@pytest.mark.asyncio
async def test_hard_limit_refuses_with_a_message_naming_budget_and_reset(store_factory: StoreFactory) -> None:
    manager = make_manager(store_factory(), [DAY], Clock())
    first = await manager.reserve("acme", "chat", D("0.6"), 100)
    assert first.enforced and first.degrade is None
    with pytest.raises(BudgetExhausted) as refused:
        await manager.reserve("acme", "chat", D("0.5"), 100)
    assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.message == (
        "budget acme/*/day (tenant 'acme', per day) exhausted: limit 1 USD, used 0, in flight 0.6, "
        "this request ~0.5; resets at 2025-03-05T00:00:00+00:00"
    )
    # Exactly up to the limit is allowed; other tenants are not affected.
    await manager.reserve("acme", "chat", D("0.4"), 100)
    await manager.reserve("globex", "chat", D("50"), 100)
    await manager.drain()


@pytest.mark.asyncio
async def test_settle_replaces_the_estimate_and_release_frees_it(store_factory: StoreFactory) -> None:
    manager = make_manager(store_factory(), [DAY], Clock())
    reservation = await manager.reserve("acme", "", D("0.6"), 100)
    await manager.settle(reservation, D("0.2"), 40)
    [usage] = await manager.usage()
    assert (usage.used_usd, usage.used_tokens, usage.in_flight_usd, usage.in_flight_tokens) == (
        D("0.2"),
        40,
        D(0),
        0,
    )
    assert usage.resets_at == datetime(2025, 3, 5, tzinfo=UTC)
    held = await manager.reserve("acme", "", D("0.8"), 100)  # 0.2 + 0.8 fits exactly
    with pytest.raises(BudgetExhausted):
        await manager.reserve("acme", "", D("0.01"), 1)
    await manager.release(held)
    await manager.reserve("acme", "", D("0.8"), 100)
    await manager.drain()


@pytest.mark.asyncio
async def test_unsettled_reservations_expire_after_the_ttl(store_factory: StoreFactory) -> None:
    clock = Clock()
    crashed = make_manager(store_factory(), [DAY], clock, reservation_ttl_s=60)
    survivor = make_manager(store_factory(), [DAY], clock, reservation_ttl_s=60)
    await crashed.reserve("acme", "", D("0.9"), 10)  # its replica dies before settling
    with pytest.raises(BudgetExhausted):
        await survivor.reserve("acme", "", D("0.9"), 10)
    clock.advance(60)
    late = await survivor.reserve("acme", "", D("0.9"), 10)
    [usage] = await survivor.usage()
    assert usage.in_flight_usd == D("0.9")
    # Settling an expired reservation still counts what was really spent.
    await crashed.settle(late, D("0.3"), 5)
    [usage] = await survivor.usage()
    assert (usage.used_usd, usage.in_flight_usd) == (D("0.3"), D(0))


@pytest.mark.asyncio
async def test_feature_and_token_budgets_are_checked_together_atomically(store_factory: StoreFactory) -> None:
    budgets = [DAY, {"tenant": "acme", "feature": "chat", "window": "month", "tokens": 1000}]
    manager = make_manager(store_factory(), budgets, Clock())
    await manager.reserve("acme", "chat", D("0.1"), 600)
    with pytest.raises(BudgetExhausted) as refused:
        await manager.reserve("acme", "chat", D("0.1"), 500)
    assert (
        "budget acme/chat/month (tenant 'acme', feature 'chat', per month) exhausted: limit 1000 tokens"
        in (refused.value.message)
    )
    assert "resets at 2025-04-01T00:00:00+00:00" in refused.value.message
    # The refused request reserved nothing on the tenant's day budget either.
    day, chat = await manager.usage()
    assert (day.budget, day.in_flight_usd, chat.in_flight_tokens) == ("acme/*/day", D("0.1"), 600)
    # Another feature is held only by the tenant budget.
    await manager.reserve("acme", "search", D("0.5"), 5000)


@pytest.mark.asyncio
async def test_soft_limits_degrade_with_the_strictest_instruction(store_factory: StoreFactory) -> None:
    budgets: list[dict[str, Any]] = [
        {"tenant": "acme", "window": "day", "usd": "5.00", "soft_usd": "4.00"},
        {
            "tenant": "acme",
            "feature": "chat",
            "window": "month",
            "soft_tokens": 1000,
            "degrade": {"quality_target": 0.3, "max_tier": "medium"},
        },
    ]
    alerts: list[BudgetAlert] = []
    manager = make_manager(store_factory(), budgets, Clock(), alerts=alerts)
    assert (await manager.reserve("acme", "search", D("3"), 100)).degrade is None
    over_usd = await manager.reserve("acme", "search", D("1.5"), 100)  # 3 + 1.5 > 4
    assert over_usd.degrade is not None and over_usd.degrade.reason == DEGRADE_REASON == "budget-degrade"
    assert (over_usd.degrade.quality_target, over_usd.degrade.max_tier) == (0.5, None)
    both = await manager.reserve("acme", "chat", D("0.1"), 1200)
    assert both.degrade is not None
    assert (both.degrade.quality_target, both.degrade.max_tier) == (0.3, "medium")
    assert both.degrade.budgets == ("acme/*/day", "acme/chat/month")
    await manager.drain()
    assert sorted((a.budget, a.kind, a.unit) for a in alerts) == [
        ("acme/*/day", "soft", "usd"),
        ("acme/chat/month", "soft", "tokens"),
    ]


@pytest.mark.asyncio
async def test_on_soft_notify_alerts_without_degrading(store_factory: StoreFactory) -> None:
    budget = {"tenant": "acme", "window": "day", "soft_usd": "1", "on_soft": "notify"}
    alerts: list[BudgetAlert] = []
    manager = make_manager(store_factory(), [budget], Clock(), alerts=alerts)
    for _ in range(3):
        assert (await manager.reserve("acme", "", D("2"), 1)).degrade is None
    await manager.drain()
    assert [(a.kind, a.limit) for a in alerts] == [("soft", D(1))]


@pytest.mark.asyncio
async def test_alerts_fire_once_per_period_across_managers(store_factory: StoreFactory) -> None:
    clock = Clock()
    seen: list[BudgetAlert] = []
    one = make_manager(store_factory(), [DAY], clock, alerts=seen)
    two = make_manager(store_factory(), [DAY], clock, alerts=seen)

    async def spend(manager: BudgetManager, usd: str) -> None:
        reservation = await manager.reserve("acme", "", D(usd), 1)
        await manager.settle(reservation, D(usd), 1)
        await manager.drain()

    await spend(one, "0.5")
    assert [a.level for a in seen] == [0.5]
    await spend(two, "0.1")  # 60 %: nothing new, and the other replica does not repeat 50 %
    await spend(two, "0.3")  # 90 %: 75 and 90 at once
    await spend(one, "0.05")
    assert [a.level for a in seen] == [0.5, 0.75, 0.9]
    for manager in (one, two, one):
        with pytest.raises(BudgetExhausted):
            await manager.reserve("acme", "", D("0.1"), 1)
    await spend(one, "0.05")  # lands exactly on the limit
    await one.drain()
    await two.drain()
    assert [(a.kind, a.level) for a in seen[3:]] == [("refused", None), ("threshold", 1.0)]
    refused = seen[3]
    assert (refused.used, refused.limit, refused.unit) == (D("0.95"), D(1), "usd")
    assert "refused a request at its hard limit" in refused.describe()

    # The next day is a new period: the budget and its alerts start over.
    clock.set(datetime(2025, 3, 5, 0, 0, tzinfo=UTC))
    await spend(two, "0.6")
    assert [(a.period, a.level) for a in seen[5:]] == [("2025-03-05", 0.5)]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("window", "before", "after", "period"),
    [
        ("day", datetime(2025, 3, 4, 23, 59, 59, tzinfo=UTC), datetime(2025, 3, 5, tzinfo=UTC), "2025-03-05"),
        ("month", datetime(2025, 12, 31, 23, 59, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC), "2026-01"),
    ],
)
async def test_window_rollover(
    store_factory: StoreFactory, window: str, before: datetime, after: datetime, period: str
) -> None:
    clock = Clock(before)
    manager = make_manager(store_factory(), [{"tenant": "acme", "window": window, "usd": "1"}], clock)
    reservation = await manager.reserve("acme", "", D("1"), 1)
    await manager.settle(reservation, D("1"), 1)
    with pytest.raises(BudgetExhausted, match=re.escape(f"resets at {after.isoformat()}")):
        await manager.reserve("acme", "", D("0.01"), 1)
    clock.set(after)
    await manager.reserve("acme", "", D("1"), 1)
    [usage] = await manager.usage()
    assert (usage.period, usage.used_usd, usage.in_flight_usd) == (period, D(0), D(1))
    await manager.drain()


@pytest.mark.asyncio
async def test_tenants_without_budgets_touch_no_store(store_factory: StoreFactory) -> None:
    store = store_factory()
    manager = make_manager(store, [DAY], Clock())
    await store.aclose()  # any store call would now fail
    reservation = await manager.reserve("globex", "chat", D("100"), 10**9)
    assert reservation.lines == () and reservation.enforced
    await manager.settle(reservation, D("100"), 10**9)
    await manager.release(reservation)


@pytest.mark.asyncio
async def test_estimates_round_up_to_the_nano_dollar(store_factory: StoreFactory) -> None:
    manager = make_manager(
        store_factory(), [{"tenant": "acme", "window": "day", "usd": "0.000000003"}], Clock()
    )
    for _ in range(3):
        await manager.reserve("acme", "", D("0.0000000001"), 0)  # a tenth of a nano-dollar counts as one
    with pytest.raises(BudgetExhausted):
        await manager.reserve("acme", "", D("0.0000000001"), 0)
    with pytest.raises(ValueError, match="must not be negative"):
        await manager.reserve("acme", "", D("-1"), 0)
    reservation = await manager.reserve("acme", "", D(0), 0)
    with pytest.raises(ValueError, match="must not be negative"):
        await manager.settle(reservation, D(0), -5)
