"""Issue 19, the budget race: a reservation is settled (or released) once, whatever cancels land.

The stores ignore a second settle or release of one reservation id (the manager counts it), and
forget finished ids after the reservation TTL. Through the pipeline, a cancel landing on either
side of settle's await (before the store ran it, after it committed) leaves the budget charged
exactly what ``CallProgress.billed()`` says, which is what the server books in the spend record.
Each race repeats ``TIERWISE_RACE_REPEATS`` times (default 3) with fresh reservations.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio

from tests.budget_support import Clock, StoreFactory, make_manager, redis_server_factory, store_factory
from tests.settle_gate import REPEATS, Point, SettleGate, gated_store, race_config
from tests.upstream import ScriptedUpstream
from tierwise.router.budgets.store import Amount, BudgetLine, Limit
from tierwise.router.call_progress import CallProgress
from tierwise.router.config import Config
from tierwise.router.outcome import PartialAnswer
from tierwise.router.service import Service, build_service
from tierwise.router.types import ChatMessage, RequestSpec

__all__ = ["race_config", "redis_server_factory", "store_factory"]

D = Decimal
DAY: dict[str, Any] = {"tenant": "acme", "window": "day", "usd": "1.00"}
SPEC = RequestSpec(tenant="acme", messages=(ChatMessage(role="user", content="Tell me a story."),))


# -- the stores: a reservation finishes once ----------------------------------


@pytest.mark.asyncio
async def test_a_second_settle_or_release_of_a_reservation_changes_nothing(
    store_factory: StoreFactory,
) -> None:
    manager = make_manager(store_factory(), [DAY], Clock())
    ignored: list[str] = []
    manager.add_duplicate_listener(ignored.append)
    settled = await manager.reserve("acme", "", D("0.5"), 10)
    await manager.settle(settled, D("0.3"), 5)
    await manager.settle(settled, D("0.4"), 7)  # the stream path's second settle, before the fix
    await manager.release(settled)
    released = await manager.reserve("acme", "", D("0.5"), 10)
    await manager.release(released)
    await manager.settle(released, D("0.2"), 3)  # a release finished it: nothing is added
    [usage] = await manager.usage()
    assert (usage.used_usd, usage.used_tokens, usage.in_flight_usd) == (D("0.3"), 5, D(0))
    assert manager.duplicate_finishes == {"settle": 2, "release": 1}
    assert ignored == ["settle", "release", "settle"]
    await manager.drain()


def _line(period: str = "2025-03-04") -> BudgetLine:
    return BudgetLine("acme/*/day", "acme", period, Limit(usd_nanos=10**9), expires_at=10**7)


@pytest.mark.asyncio
async def test_finished_ids_are_forgotten_after_keep_s(store_factory: StoreFactory) -> None:
    """Bounded memory: an id is remembered for keep_s (the reservation TTL), then dropped."""
    store, lines = store_factory(), [_line()]
    first = await store.settle("r1", lines, Amount(5, 1), 1000.0, 60.0)
    repeat = await store.settle("r1", lines, Amount(5, 1), 1059.0, 60.0)
    assert (first.applied, repeat.applied, repeat.used) == (True, False, (Amount(5, 1),))
    assert not await store.release("r1", lines, 1059.0, 60.0)
    # 60 s on, r1 was forgotten (purged by the next finish): it counts again.
    later = await store.settle("r1", lines, Amount(5, 1), 1061.0, 60.0)
    assert (later.applied, later.used) == (True, (Amount(10, 2),))
    assert await store.release("r2", lines, 1061.0, 60.0)


# -- through the pipeline: a cancel at each side of settle's await ------------


@pytest_asyncio.fixture
async def service(race_config: Config) -> AsyncIterator[Service]:
    built = await build_service(race_config)
    yield built
    await built.aclose()


@pytest.mark.asyncio
async def test_the_metrics_count_ignored_settles_and_releases(service: Service) -> None:
    reservation = await service.budgets.reserve("acme", "", D("0.5"), 10)
    await service.budgets.settle(reservation, D("0.3"), 5)
    await service.budgets.settle(reservation, D("0.3"), 5)
    await service.budgets.release(reservation)
    exposition = service.accounting.metrics.exposition().decode()
    assert 'tierwise_budget_duplicate_finishes_total{operation="settle"} 1.0' in exposition
    assert 'tierwise_budget_duplicate_finishes_total{operation="release"} 1.0' in exposition
    assert await used_and_in_flight(service) == (D("0.3"), D(0))


async def used_and_in_flight(service: Service) -> tuple[Decimal, Decimal]:
    [usage] = await service.budgets.usage()
    return usage.used_usd, usage.in_flight_usd


def complete(service: Service, progress: CallProgress) -> asyncio.Task[Any]:
    call = service.pipeline.complete(
        SPEC, uuid.uuid4().hex, started=time.perf_counter(), deadline=None, progress=progress
    )
    return asyncio.create_task(call)


def stream(service: Service, progress: CallProgress) -> asyncio.Task[Any]:
    async def consume() -> None:
        items = service.pipeline.stream(
            SPEC, uuid.uuid4().hex, started=time.perf_counter(), deadline=None, progress=progress
        )
        async with contextlib.aclosing(items):
            async for _ in items:
                pass

    return asyncio.create_task(consume())


async def cancelled_while_parked(task: asyncio.Task[Any], gate: SettleGate, service: Service) -> None:
    await asyncio.wait_for(gate.parked.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.let_go()
    await gate.idle()
    await service.budgets.drain()


@pytest.mark.asyncio
@pytest.mark.parametrize("point", ["before", "after"])
@pytest.mark.parametrize("path", [complete, stream], ids=["unary", "stream"])
async def test_a_cancel_during_the_settle_of_an_answer_charges_it_once(
    service: Service,
    monkeypatch: pytest.MonkeyPatch,
    point: Point,
    path: Callable[[Service, CallProgress], asyncio.Task[Any]],
) -> None:
    full = CallProgress()
    await path(service, full)  # uncancelled: what the answer costs
    answer = full.billed()
    assert answer is not None and answer.cost_usd > 0
    gate = SettleGate(monkeypatch, gated_store(service.config), "settle", point)
    for round_ in range(1, REPEATS + 1):
        gate.arm()
        progress = CallProgress()
        await cancelled_while_parked(path(service, progress), gate, service)
        # What the server books for the cancelled request: the answer, charged once.
        assert progress.billed() == answer
        assert await used_and_in_flight(service) == ((round_ + 1) * answer.cost_usd, D(0))
    assert service.budgets.duplicate_finishes.total() == 0  # the pipeline charged each request once


@pytest.mark.asyncio
@pytest.mark.parametrize("point", ["before", "after"])
async def test_a_second_cancel_during_the_settle_of_an_abandoned_call_charges_its_prompt_once(
    service: Service, upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch, point: Point
) -> None:
    upstream.script(latency_s=30.0)
    gate = SettleGate(monkeypatch, gated_store(service.config), "settle", point)
    charged = D(0)
    for round_ in range(1, REPEATS + 1):
        gate.arm()
        progress = CallProgress()
        task = complete(service, progress)
        while len(upstream.requests) < round_:  # the upstream call is under way
            await asyncio.sleep(0.005)
        task.cancel()  # the first cancel: complete settles the prompt it sent
        await cancelled_while_parked(task, gate, service)  # the second lands in that settle
        billed = progress.billed()
        assert isinstance(billed, PartialAnswer) and billed.usage.output_tokens == 0 and billed.cost_usd > 0
        charged += billed.cost_usd
        assert await used_and_in_flight(service) == (charged, D(0))
