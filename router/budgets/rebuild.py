"""Rebuilding a budget period's usage from a durable source after the shared store lost it.

Redis keeps budget usage in memory: restarted without persistence (or with
keys evicted) it comes back empty, and every tenant would start its period
again at zero. The Redis store therefore marks each period it has been seeded
for (``SeededBudgetStore``); when a reservation finds the mark missing, the
manager asks a ``UsageSource`` (the spend ledger, wired in
``router/service.py``) what the budget's tenant (and feature) spent in the
period, and seeds the store with it. The seed is conditional and atomic in the
store, so when several replicas rebuild at once exactly one seed takes effect
and the others see its value; within one replica, concurrent requests share
one rebuild.

What the source does not hold yet is not counted, so after a rebuild a budget
can overrun its limit by, beyond the usual in-flight bound: the records still in
another replica's ledger journal (about ``ledger.flush_interval_s`` of its spend
while the ledger's database is up; the rebuilding replica writes its own journal
out first), and requests in flight when Redis lost the data that settle before
the rebuild and reach the ledger after it (the seed keeps the larger of the two
counts, never their sum, so those are not double-counted either).

A key's budget is rebuilt from its tenant's (and feature's) spend made with that key or with
no key recorded: spend records written before the ledger had an ``api_key`` column carry none,
so counting them too keeps the rebuild at or above what the key spent, never below.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from tierwise.cache.backoff import DownGate
from tierwise.router.budgets.errors import BudgetStoreUnavailable
from tierwise.router.budgets.store import (
    Amount,
    BudgetLine,
    Period,
    SeededBudgetStore,
    nanos_to_usd,
    usd_to_nanos,
)
from tierwise.router.pricing import usd_str

log = logging.getLogger("tierwise.budgets")


class UsageSource(Protocol):
    """Settled spend, kept durably elsewhere than the budget store."""

    name: str  # for messages: "the spend ledger (PostgresSpendSink)"

    async def spent(
        self, tenant: str, feature: str | None, since: datetime, until: datetime, key: str | None = None
    ) -> tuple[Decimal, int]:
        """USD and tokens (input + output) the tenant spent in [since, until); ``feature`` None: all
        of its features; ``key``: only with that API key or none recorded. Raises when the source
        cannot answer."""
        ...


@dataclass(frozen=True, slots=True)
class LineToSeed:
    line: BudgetLine
    tenant: str
    feature: str | None
    period: Period
    key: str | None = None


class UsageRebuilder:
    def __init__(
        self, store: SeededBudgetStore, source: UsageSource | None, *, timeout_s: float, gate: DownGate
    ) -> None:
        self._store = store
        self._source = source
        self._timeout_s = timeout_s
        # After the source failed, rebuilds fail at once until its backoff passes: a ledger that is
        # down must not cost every request of a lost period the full timeout.
        self._gate = gate
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def rebuild_missing(self, lines: Sequence[LineToSeed], now: float) -> None:
        """Seed those of ``lines`` whose period has no mark (a read that must not show zero)."""
        missing = await self._store.unseeded([item.line for item in lines])
        await self.rebuild([lines[i] for i in missing], now)

    async def rebuild(self, lines: Sequence[LineToSeed], now: float) -> None:
        """Seed every line from the source; raises ``BudgetStoreUnavailable`` naming what failed."""
        tasks = []
        for item in lines:
            key = (item.line.budget, item.line.period)
            task = self._running.get(key)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._rebuild(item, now))
                self._running[key] = task
                task.add_done_callback(functools.partial(self._forget, key))
            tasks.append(task)
        # Shielded: a request cancelled while waiting must not cancel the rebuild others wait on.
        await asyncio.gather(*(asyncio.shield(task) for task in tasks))

    def _forget(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        self._running.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have been cancelled

    async def _rebuild(self, item: LineToSeed, now: float) -> None:
        line = item.line
        used = await self._spent(item)
        [seeded] = await self._store.seed([line], [used], now)
        if seeded:
            # A period's first reservation seeds it too (with nothing spent yet): not worth a warning.
            log.log(
                logging.WARNING if used != Amount() else logging.INFO,
                "budget %s, period %s: usage rebuilt from %s: %s USD, %d tokens",
                line.budget,
                line.period,
                "nothing (no ledger to read)" if self._source is None else self._source.name,
                usd_str(nanos_to_usd(used.usd_nanos)),
                used.tokens,
            )

    async def _spent(self, item: LineToSeed) -> Amount:
        if self._source is None:
            return Amount()
        if not self._gate.ready():
            raise self._unavailable(item, "backing off after a failure")
        try:
            async with asyncio.timeout(self._timeout_s):
                usd, tokens = await self._source.spent(
                    item.tenant, item.feature, item.period.start, item.period.end, item.key
                )
        except Exception as exc:
            wait = self._gate.failed()
            reason = f"no answer in {self._timeout_s:g} s" if isinstance(exc, TimeoutError) else str(exc)
            error = self._unavailable(item, f"{type(exc).__name__}: {reason}")
            log.warning("%s; next try in %.1f s", error.message, wait)
            raise error from exc
        self._gate.succeeded()
        return Amount(usd_to_nanos(usd, round_up=True), tokens)

    def _unavailable(self, item: LineToSeed, reason: str) -> BudgetStoreUnavailable:
        name = "the ledger" if self._source is None else self._source.name
        return BudgetStoreUnavailable(
            f"budget {item.line.budget}'s usage for {item.line.period} was lost by the budget store"
            f" and could not be rebuilt from {name}: {reason}"
        )
