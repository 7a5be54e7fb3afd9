"""Issue 19 through the real gRPC server: the caller cancels while the settle of its answer is
parked on either side of the store call (SQLite and Redis, unary and stream). The spend ledger
then books the request as CANCELLED at the answer's cost, and the budget was charged that cost
once: ledger and budget agree exactly. Each race repeats ``TIERWISE_RACE_REPEATS`` times."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any, cast

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from tests.harness import AUTH, Running, running_server
from tests.redis_server import redis_server_factory
from tests.settle_gate import REPEATS, Point, SettleGate, gated_store, race_config
from tierwise.router.auth import Authenticator
from tierwise.router.config import Config
from tierwise.router.ledger.spend_ledger import SpendLedger
from tierwise.router.rate_limiting import RequestLimits
from tierwise.router.rate_limits import RateLimitGate
from tierwise.router.server import RouterServicer
from tierwise.v1 import tierwise_pb2 as pb

__all__ = ["race_config", "redis_server_factory"]

REQUEST = pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content="Tell me a story.")])


@pytest_asyncio.fixture
async def svc(race_config: Config) -> AsyncIterator[Running]:
    async with running_server(race_config) as running:
        yield running


def ledger_of(svc: Running) -> SpendLedger:
    ledger = svc.server.service.accounting.ledger
    assert ledger is not None
    return ledger


async def booked(svc: Running) -> dict[str, tuple[int, Decimal]]:
    """Requests and cost per status in the spend ledger, once every record was written."""
    ledger, now = ledger_of(svc), time.time()
    assert await ledger.flush(10)
    rows = await ledger.totals(now - 600, now + 600, ["status"])
    return {row.group["status"]: (row.requests, row.cost_usd) for row in rows}


async def cancelled_booked(svc: Running, count: int) -> None:
    """Wait until the server has booked ``count`` cancelled requests (it books before the settle ends)."""
    for _ in range(400):
        if booked_count(await booked(svc)) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"the server did not book {count} cancelled requests")


def booked_count(totals: dict[str, tuple[int, Decimal]]) -> int:
    return totals.get("CANCELLED", (0, Decimal(0)))[0]


async def budget_used(svc: Running) -> tuple[Decimal, Decimal]:
    [usage] = await svc.server.service.budgets.usage()
    return usage.used_usd, usage.in_flight_usd


def unary(svc: Running) -> Any:
    return svc.stub.Complete(REQUEST, metadata=AUTH)


def stream(svc: Running) -> Any:
    return svc.stub.CompleteStream(REQUEST, metadata=AUTH)


async def answer_cost(svc: Running, call: Callable[[Running], Any]) -> Decimal:
    if call is unary:
        response = await call(svc)
        return Decimal(response.cost_usd_exact)
    chunks = [chunk async for chunk in call(svc)]
    return Decimal(chunks[-1].end.cost_usd_exact)


@pytest.mark.asyncio
@pytest.mark.parametrize("point", ["before", "after"])
@pytest.mark.parametrize("call", [unary, stream], ids=["unary", "stream"])
async def test_a_caller_cancelling_during_the_settle_is_booked_at_what_the_budget_was_charged(
    svc: Running, monkeypatch: pytest.MonkeyPatch, point: Point, call: Callable[[Running], Any]
) -> None:
    cost = await answer_cost(svc, call)  # uncancelled: the answer's cost, booked OK
    assert cost > 0
    gate = SettleGate(monkeypatch, gated_store(svc.config), "settle", point)
    budgets = svc.server.service.budgets
    for round_ in range(1, REPEATS + 1):
        gate.arm()
        pending = call(svc)
        await asyncio.wait_for(gate.parked.wait(), 10)
        pending.cancel()
        if call is unary:
            with pytest.raises(asyncio.CancelledError):
                await pending
        await cancelled_booked(svc, round_)  # the cancel reached the server while the settle was parked
        gate.let_go()
        await gate.idle()
        await budgets.drain()
        totals = await booked(svc)
        assert totals["CANCELLED"] == (round_, round_ * cost)
        ledger_cost = sum((c for _, c in totals.values()), Decimal(0))
        assert await budget_used(svc) == (ledger_cost, Decimal(0))
    assert budgets.duplicate_finishes.total() == 0


class CallContext:
    """What CompleteStream reads of its gRPC context, for driving the handler as the runtime does."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return AUTH

    def time_remaining(self) -> float | None:
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"


@pytest.mark.asyncio
async def test_a_stream_closed_at_its_last_chunk_is_booked_once(svc: Running) -> None:
    """gRPC closes a handler's generator at the yield it waits on when the caller leaves; at the
    last chunk, the answer was already booked (and charged), so nothing more is booked."""
    service = svc.server.service
    gate = RateLimitGate.from_config(service.config, CollectorRegistry(), None)  # no limits configured
    servicer = RouterServicer(service, Authenticator(svc.config.auth), RequestLimits(service.config, gate))
    handler = servicer.CompleteStream(REQUEST, cast(Any, CallContext()))
    async for chunk in handler:
        if chunk.HasField("end"):
            break
    await handler.aclose()  # GeneratorExit at the yield of the last chunk
    totals = await booked(svc)
    assert list(totals) == ["OK"] and totals["OK"][0] == 1
    assert await budget_used(svc) == (totals["OK"][1], Decimal(0))
    # The ledger keeps a request id's first record; the metrics count every booking.
    [requests] = svc.server.service.accounting.metrics.requests.collect()
    counted = [(s.labels["status"], s.value) for s in requests.samples if s.name.endswith("_total")]
    assert counted == [("OK", 1.0)]
