"""Invariant 2 under a 64-way burst: a budget never admits more than its limit plus what is in flight.

Each store is driven by two BudgetManager instances at once (two SQLite
connections on one file; two Redis clients on one real redis-server), as two
replicas would.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from tests.budget_support import Clock, StoreFactory, make_manager, redis_server_factory, store_factory
from tierwise.router.budgets.manager import BudgetManager, BudgetReservation
from tierwise.router.errors import BudgetExhausted

__all__ = ["redis_server_factory", "store_factory"]

BURST = 64
LIMIT = Decimal("1.00")
ESTIMATE = Decimal("0.05")  # the limit holds exactly 20 of them
BUDGET = {"tenant": "acme", "window": "day", "usd": str(LIMIT)}


def replicas(store_factory: StoreFactory, clock: Clock) -> list[BudgetManager]:
    return [make_manager(store_factory(), [BUDGET], clock) for _ in range(2)]


async def reserve_or_none(manager: BudgetManager) -> BudgetReservation | None:
    try:
        return await manager.reserve("acme", "chat", ESTIMATE, 100)
    except BudgetExhausted:
        return None


@pytest.mark.asyncio
async def test_burst_of_reservations_admits_exactly_what_fits(store_factory: StoreFactory) -> None:
    managers = replicas(store_factory, Clock())
    results = await asyncio.gather(*(reserve_or_none(managers[i % 2]) for i in range(BURST)))
    admitted = [r for r in results if r is not None]
    assert len(admitted) == int(LIMIT / ESTIMATE) == 20
    [usage] = await managers[0].usage()
    assert usage.in_flight_usd == LIMIT and usage.used_usd == 0


@pytest.mark.asyncio
async def test_overspend_is_bounded_by_the_reservations_in_flight(store_factory: StoreFactory) -> None:
    managers = replicas(store_factory, Clock())
    results = await asyncio.gather(*(reserve_or_none(managers[i % 2]) for i in range(BURST)))
    admitted = [r for r in results if r is not None]
    overrun = Decimal("0.01")  # every call costs more than its estimate
    await asyncio.gather(*(managers[0].settle(r, ESTIMATE + overrun, 120) for r in admitted))
    [usage] = await managers[1].usage()
    assert usage.used_usd == LIMIT + overrun * len(admitted) == Decimal("1.20")
    assert usage.in_flight_usd == 0
    # Now over the limit, nothing more is admitted by either replica.
    assert await reserve_or_none(managers[0]) is None and await reserve_or_none(managers[1]) is None


@pytest.mark.asyncio
async def test_burst_of_whole_requests_never_spends_past_the_limit(store_factory: StoreFactory) -> None:
    managers = replicas(store_factory, Clock())
    completed = 0

    async def request(manager: BudgetManager) -> None:
        nonlocal completed
        reservation = await reserve_or_none(manager)
        if reservation is None:
            return
        await asyncio.sleep(0)  # the upstream call: let the other requests interleave
        await manager.settle(reservation, ESTIMATE, 100)
        completed += 1

    await asyncio.gather(*(request(managers[i % 2]) for i in range(BURST)))
    [usage] = await managers[0].usage()
    assert completed == 20 and usage.used_usd == LIMIT and usage.in_flight_usd == 0
