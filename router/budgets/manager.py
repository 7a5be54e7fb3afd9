"""Budgets: reserve a request's estimated cost before the call, settle the actual cost after it.

A reservation checks every budget that matches the tenant (feature, API key) in
one atomic store operation: used + in flight + this estimate must stay within
each hard limit, so concurrent requests, on any replica, can overspend a limit
by no more than what the requests already in flight spend beyond their
estimates. Over a soft limit the reservation carries a ``Degrade`` (a lower
quality target or a cap on the tier). Alerts fire once per budget period.

When the store cannot be reached, the fail mode decides, per reservation:
``closed`` (the default for every budget with a hard limit: a limit that an
outage switches off is no limit) refuses it with UNAVAILABLE naming the store;
``open`` (only where ``budget_store.fail_mode`` or the budget's own
``fail_mode`` says so, and for budgets with soft limits only) admits it
unmetered. Both are logged and told to the fail-mode listeners (a metric), and
every failed store call to the store-error listeners. Either way the store is
not tried again before a backoff (doubling up to ``reconnect_max_s``), so an
outage costs requests no timeouts.

A store that can lose its usage (Redis) marks each period it holds; when a
reservation finds a period unmarked, its usage is rebuilt from the ledger first
(``budgets/rebuild.py``), so a restart of Redis does not hand tenants a fresh
budget.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

from tierwise.cache.backoff import Backoff, DownGate
from tierwise.router.budgets.alert_checks import AlertChecks
from tierwise.router.budgets.alerts import AlertDispatcher, Unit
from tierwise.router.budgets.errors import BudgetStoreUnavailable
from tierwise.router.budgets.rebuild import LineToSeed, UsageRebuilder, UsageSource
from tierwise.router.budgets.redis_store import RedisBudgetStore
from tierwise.router.budgets.sqlite_store import SqliteBudgetStore
from tierwise.router.budgets.store import (
    WINDOW_RETENTION,
    Amount,
    BudgetLine,
    BudgetStore,
    Limit,
    LineState,
    Period,
    ReserveResult,
    SeededBudgetStore,
    nanos_to_usd,
    usd_to_nanos,
)
from tierwise.router.config import BudgetConfig, BudgetStoreConfig, Config
from tierwise.router.errors import BudgetExhausted
from tierwise.router.pricing import usd_str

log = logging.getLogger("tierwise.budgets")

T = TypeVar("T")
DEGRADE_REASON = "budget-degrade"
StoreErrorListener = Callable[[str, BudgetStoreUnavailable], None]  # (operation, error)
FailDecision = Literal["admitted", "refused"]
FailModeListener = Callable[[FailDecision], None]  # a reservation the store's outage decided
DuplicateListener = Callable[[str], None]  # the operation ("settle", "release") the store ignored


@dataclass(frozen=True, slots=True)
class Degrade:
    """How to route a request over a soft limit: the strictest of the budgets that ask for it."""

    quality_target: float | None
    max_tier: str | None
    budgets: tuple[str, ...]
    reason: str = DEGRADE_REASON


@dataclass(frozen=True, slots=True)
class BudgetReservation:
    id: str
    tenant: str
    feature: str
    lines: tuple[BudgetLine, ...]
    amount: Amount
    degrade: Degrade | None = None
    enforced: bool = True  # False: the store was unreachable and fail_mode open admitted the request


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    budget: str
    period: str
    used_usd: Decimal
    used_tokens: int
    in_flight_usd: Decimal
    in_flight_tokens: int
    limit_usd: Decimal | None
    limit_tokens: int | None
    resets_at: datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


class BudgetManager:
    def __init__(
        self,
        budgets: Sequence[BudgetConfig],
        store: BudgetStore,
        settings: BudgetStoreConfig | None = None,
        *,
        tier_order: Sequence[str] = (),
        alerts: AlertDispatcher | None = None,
        wall_clock: Callable[[], datetime] = utc_now,
        clock: Callable[[], float] = time.monotonic,
        usage_source: UsageSource | None = None,
    ) -> None:
        self._budgets = {b.name: b for b in budgets}  # shared with AlertChecks: changed in place
        self._stored_key_budgets: set[str] = set()
        self._store = store
        self._settings = settings or BudgetStoreConfig()
        self._tier_order = list(tier_order)
        self.alerts = alerts or AlertDispatcher(timeout_s=self._settings.webhook_timeout_s)
        self._wall_clock = wall_clock
        # No jitter: the gate only spares requests a dead store's timeouts; nothing retries in step.
        self._backoff = DownGate(
            Backoff(self._settings.reconnect_min_s, self._settings.reconnect_max_s), clock
        )
        self._store_listeners: list[StoreErrorListener] = []
        self._fail_mode_listeners: list[FailModeListener] = []
        self._decided: set[FailDecision] = set()  # fail-mode decisions logged in this outage
        self._rebuilder = (
            UsageRebuilder(
                store,
                usage_source,
                timeout_s=self._settings.rebuild_timeout_s,
                gate=DownGate(Backoff(self._settings.reconnect_min_s, self._settings.reconnect_max_s), clock),
            )
            if isinstance(store, SeededBudgetStore)
            else None
        )
        self._alert_checks = AlertChecks(self._budgets, store, self.alerts, wall_clock, self._period)
        self._finishing: set[asyncio.Task[Any]] = set()  # settles and releases run to their end
        # A second settle or release of one reservation is a no-op in the store; counted here.
        self.duplicate_finishes: collections.Counter[str] = collections.Counter()
        self._duplicate_listeners: list[DuplicateListener] = []

    def add_duplicate_listener(self, listener: DuplicateListener) -> None:
        """Told of each settle or release the store ignored: its reservation was finished before."""
        self._duplicate_listeners.append(listener)

    def add_store_error_listener(self, listener: StoreErrorListener) -> None:
        self._store_listeners.append(listener)

    def add_fail_mode_listener(self, listener: FailModeListener) -> None:
        self._fail_mode_listeners.append(listener)

    # -- the request path ---------------------------------------------------

    async def reserve(
        self, tenant: str, feature: str, estimated_usd: Decimal, estimated_tokens: int, *, key: str = ""
    ) -> BudgetReservation:
        """Reserve the estimate on every matching budget, or raise ``BudgetExhausted``; ``key`` is the
        label of the caller's API key (its budgets match only its requests)."""
        if estimated_usd < 0 or estimated_tokens < 0:
            raise ValueError("estimates must not be negative")
        amount = Amount(usd_to_nanos(estimated_usd, round_up=True), estimated_tokens)
        now = self._wall_clock()
        lines = tuple(self._line(b, now) for b in self._matching(tenant, feature, key))
        reservation = BudgetReservation(uuid.uuid4().hex, tenant, feature, lines, amount)
        if not lines:
            return reservation
        try:
            result = await self._reserve_seeded(reservation, now)
        except BudgetStoreUnavailable as exc:
            return self._fail(reservation, exc)
        if result.refused is not None:
            line, state = lines[result.refused], result.states[result.refused]
            self._alert_checks.crossed(line, "refused", [self._refused_unit(line, state, amount)], state.used)
            raise BudgetExhausted(self._exhausted_message(line, state, amount))
        degrade = self._soft_limits(lines, result.states, amount)
        return replace(reservation, degrade=degrade)

    async def _reserve_seeded(self, reservation: BudgetReservation, now: datetime) -> ReserveResult:
        lines, ts = reservation.lines, now.timestamp()
        ttl_s = self._settings.reservation_ttl_s

        def reserve() -> Coroutine[Any, Any, ReserveResult]:
            return self._store.reserve(reservation.id, lines, reservation.amount, ts, ttl_s)

        result = await self._store_call("reserve", reserve)
        if not result.unseeded:
            return result
        assert self._rebuilder is not None, "only a SeededBudgetStore reports unseeded lines"
        rebuilder, missing = self._rebuilder, [self._to_seed(lines[i]) for i in result.unseeded]
        try:
            # Not through _store_call: a ledger that cannot answer must not close the gate of
            # a store that still serves every period already rebuilt (the rebuilder has its own).
            await rebuilder.rebuild(missing, ts)
        except BudgetStoreUnavailable as exc:
            self._store_failed("rebuild", exc, new=False)
            raise
        result = await self._store_call("reserve", reserve)
        if result.unseeded:
            raise BudgetStoreUnavailable(
                f"budget store {self._store.name} lost budget usage again mid-rebuild"
            )
        return result

    def _fail(self, reservation: BudgetReservation, error: BudgetStoreUnavailable) -> BudgetReservation:
        """The store could not decide: refuse when a hard-limited budget fails closed, else admit unmetered."""
        closed = [line.budget for line in reservation.lines if self._fail_mode(line) == "closed"]
        decision: FailDecision = "refused" if closed else "admitted"
        first = decision not in self._decided  # once per outage and decision in the log
        self._decided.add(decision)
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "tenant %r's request %s by the budget fail mode (closed: %s)",
            reservation.tenant,
            decision,
            closed or "none",
        )
        for listener in self._fail_mode_listeners:
            listener(decision)
        if closed:
            refused = f"; fail_mode is closed for budget {closed[0]}, so its requests are refused"
            raise BudgetStoreUnavailable(error.message + refused, public=error.public + refused) from None
        return replace(reservation, enforced=False)

    def _fail_mode(self, line: BudgetLine) -> Literal["open", "closed"]:
        if line.hard.usd_nanos is None and line.hard.tokens is None:
            return "open"  # soft limits only: nothing to refuse even with the store up
        return self._budgets[line.budget].fail_mode or self._settings.fail_mode

    async def settle(self, reservation: BudgetReservation, actual_usd: Decimal, actual_tokens: int) -> None:
        """Replace the reservation by the actual spend; never raises for a store outage (logged)."""
        if actual_usd < 0 or actual_tokens < 0:
            raise ValueError("actual spend must not be negative")
        if not reservation.lines:
            return
        actual = Amount(usd_to_nanos(actual_usd, round_up=True), actual_tokens)
        now = self._wall_clock().timestamp()
        first_failure = self._backoff.ready()
        keep_s = self._settings.reservation_ttl_s
        try:
            result = await self._run_to_end(
                "settle", lambda: self._store.settle(reservation.id, reservation.lines, actual, now, keep_s)
            )
        except BudgetStoreUnavailable:
            # Once per outage in the log; every lost settle reaches the store-error listeners (a metric).
            log.log(
                logging.WARNING if first_failure else logging.DEBUG,
                "spend of %s USD, %d tokens not counted against budgets %s: store unavailable",
                usd_str(actual_usd),
                actual_tokens,
                [line.budget for line in reservation.lines],
            )
            return
        if not result.applied:
            self._duplicate("settle", reservation)
            return
        for line, line_used in zip(reservation.lines, result.used, strict=True):
            self._alert_checks.thresholds(line, line_used)

    async def release(self, reservation: BudgetReservation) -> None:
        """The request failed before spending: free its reservation (it would expire anyway)."""
        if not reservation.lines:
            return
        now = self._wall_clock().timestamp()
        keep_s = self._settings.reservation_ttl_s
        # A store outage is logged by _store_call; the reservation then expires after reservation_ttl_s.
        with contextlib.suppress(BudgetStoreUnavailable):
            released = await self._run_to_end(
                "release", lambda: self._store.release(reservation.id, reservation.lines, now, keep_s)
            )
            if not released:
                self._duplicate("release", reservation)

    async def _run_to_end(self, operation: str, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Shielded: a caller cancelled mid-settle must not leave its spend uncounted (nor a release
        half done); ``drain`` waits for a call its caller left."""
        task = asyncio.get_running_loop().create_task(self._store_call(operation, call))
        self._finishing.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._finishing.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that left cannot; _store_call logged a failure

    def _duplicate(self, operation: str, reservation: BudgetReservation) -> None:
        self.duplicate_finishes[operation] += 1
        log.debug(
            "%s of reservation %s ignored: it was settled or released before", operation, reservation.id
        )
        for listener in self._duplicate_listeners:
            listener(operation)

    def set_key_budgets(self, budgets: Sequence[BudgetConfig]) -> None:
        """The budgets of the keys kept as data (``tierwise keys``), replacing the last set given;
        the config's budgets stay. A key's new limit applies from its next reservation."""
        for name in self._stored_key_budgets - {b.name for b in budgets}:
            del self._budgets[name]
        for budget in budgets:
            self._budgets[budget.name] = budget
        self._stored_key_budgets = {b.name for b in budgets}

    def budget_tenants(self) -> dict[str, str]:
        """Every budget's name -> its tenant (the config's and the stored keys')."""
        return {name: budget.tenant for name, budget in self._budgets.items()}

    def tenant_of(self, budget: str) -> str:
        """The tenant a budget (by name, as ``usage`` names it) belongs to; "" when unknown."""
        known = self._budgets.get(budget)
        return "" if known is None else known.tenant

    # -- reporting ------------------------------------------------------------

    async def usage(self) -> list[BudgetUsage]:
        """Every budget's current period (an admin RPC or ``tierwise report``); raises when the store is down."""
        now = self._wall_clock()
        lines = [self._line(b, now) for b in self._budgets.values()]
        if not lines:
            return []
        if self._rebuilder is not None:
            await self._rebuilder.rebuild_missing([self._to_seed(line) for line in lines], now.timestamp())
        states = await self._store.usage(lines, now.timestamp())
        return [self._usage(line, state, now) for line, state in zip(lines, states, strict=True)]

    async def drain(self) -> None:
        """Wait for settles and releases whose callers left, alert checks and webhook posts under way."""
        while self._finishing:
            await asyncio.gather(*list(self._finishing), return_exceptions=True)
        await self._alert_checks.drain()
        await self.alerts.drain()

    async def aclose(self) -> None:
        await self.drain()
        await self.alerts.aclose()
        await self._store.aclose()

    # -- inside ---------------------------------------------------------------

    def _matching(self, tenant: str, feature: str, key: str) -> list[BudgetConfig]:
        return [
            b
            for b in self._budgets.values()
            if b.tenant == tenant
            and (b.feature is None or b.feature == feature)
            and (b.key is None or b.key == key)
        ]

    def _line(self, budget: BudgetConfig, now: datetime) -> BudgetLine:
        period = Period.containing(budget.window, now)
        hard = Limit(None if budget.usd is None else usd_to_nanos(budget.usd, round_up=False), budget.tokens)
        return BudgetLine(
            budget.name, budget.tenant, period.key, hard, (period.end + WINDOW_RETENTION).timestamp()
        )

    def _to_seed(self, line: BudgetLine) -> LineToSeed:
        budget = self._budgets[line.budget]
        # A key budget: from the key's spend and what carries no key (rebuild.py says why).
        return LineToSeed(line, budget.tenant, budget.feature, self._period(line), budget.key)

    def _period(self, line: BudgetLine) -> Period:
        budget = self._budgets[line.budget]
        start = datetime.strptime(line.period, "%Y-%m-%d" if budget.window == "day" else "%Y-%m")
        return Period.containing(budget.window, start.replace(tzinfo=UTC))

    async def _store_call(self, operation: str, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        if not self._backoff.ready():
            error = BudgetStoreUnavailable(f"budget store {self._store.name} unavailable (backing off)")
            self._store_failed(operation, error, new=False)
            raise error
        try:
            result = await call()
        except BudgetStoreUnavailable as exc:
            self._store_failed(operation, exc, new=True)
            raise
        if self._backoff.succeeded():
            self._decided.clear()
            log.warning("budget store %s reachable again", self._store.name)
        return result

    def _store_failed(self, operation: str, error: BudgetStoreUnavailable, *, new: bool) -> None:
        if new:
            wait = self._backoff.failed()
            log.warning("%s (during %s); next try in %.1f s", error.message, operation, wait)
        for listener in self._store_listeners:
            listener(operation, error)

    def _soft_limits(
        self, lines: Sequence[BudgetLine], states: Sequence[LineState], amount: Amount
    ) -> Degrade | None:
        degrading: list[BudgetConfig] = []
        for line, state in zip(lines, states, strict=True):
            budget = self._budgets[line.budget]
            total = state.committed + amount
            units: list[Unit] = []
            if budget.soft_usd is not None and total.usd_nanos > usd_to_nanos(
                budget.soft_usd, round_up=False
            ):
                units.append("usd")
            if budget.soft_tokens is not None and total.tokens > budget.soft_tokens:
                units.append("tokens")
            if units:
                self._alert_checks.crossed(line, "soft", units, state.used)
                if budget.on_soft == "degrade":
                    degrading.append(budget)
        if not degrading:
            return None
        targets = [b.degrade.quality_target for b in degrading if b.degrade.quality_target is not None]
        caps = [b.degrade.max_tier for b in degrading if b.degrade.max_tier is not None]
        return Degrade(
            quality_target=min(targets) if targets else None,
            max_tier=min(caps, key=self._tier_rank) if caps else None,
            budgets=tuple(b.name for b in degrading),
        )

    def _tier_rank(self, tier: str) -> int:
        return self._tier_order.index(tier) if tier in self._tier_order else len(self._tier_order)

    def _refused_unit(self, line: BudgetLine, state: LineState, amount: Amount) -> Unit:
        total = state.committed + amount
        return (
            "usd" if line.hard.usd_nanos is not None and total.usd_nanos > line.hard.usd_nanos else "tokens"
        )

    def _exhausted_message(self, line: BudgetLine, state: LineState, amount: Amount) -> str:
        budget = self._budgets[line.budget]
        scope = f"tenant {budget.tenant!r}" + (f", feature {budget.feature!r}" if budget.feature else "")
        scope += f", API key {budget.key!r}" if budget.key else ""
        if self._refused_unit(line, state, amount) == "usd":
            numbers = (
                f"limit {usd_str(nanos_to_usd(line.hard.usd_nanos or 0))} USD, "
                f"used {usd_str(nanos_to_usd(state.used.usd_nanos))}, "
                f"in flight {usd_str(nanos_to_usd(state.in_flight.usd_nanos))}, "
                f"this request ~{usd_str(nanos_to_usd(amount.usd_nanos))}"
            )
        else:
            numbers = (
                f"limit {line.hard.tokens} tokens, used {state.used.tokens}, "
                f"in flight {state.in_flight.tokens}, this request ~{amount.tokens}"
            )
        resets = self._period(line).end.isoformat()
        return f"budget {budget.name} ({scope}, per {budget.window}) exhausted: {numbers}; resets at {resets}"

    def _usage(self, line: BudgetLine, state: LineState, now: datetime) -> BudgetUsage:
        budget = self._budgets[line.budget]
        return BudgetUsage(
            budget=line.budget,
            period=line.period,
            used_usd=nanos_to_usd(state.used.usd_nanos),
            used_tokens=state.used.tokens,
            in_flight_usd=nanos_to_usd(state.in_flight.usd_nanos),
            in_flight_tokens=state.in_flight.tokens,
            limit_usd=budget.usd,
            limit_tokens=budget.tokens,
            resets_at=Period.containing(budget.window, now).end,
        )


async def build_budget_manager(
    config: Config, *, alerts: AlertDispatcher | None = None, usage_source: UsageSource | None = None
) -> BudgetManager:
    """The manager over the configured store: Redis when ``store.kind`` is redis, else SQLite in store.path;
    ``usage_source`` (the ledger) rebuilds what Redis loses. The store is closed again if the manager
    cannot be built over it."""
    settings = config.budget_store
    store: BudgetStore
    if config.store.kind == "redis" and config.store.url is not None:
        store = RedisBudgetStore.from_url(config.store.url, timeout_s=settings.redis_timeout_s)
    else:
        store = SqliteBudgetStore(config.store.path / "budgets.sqlite3")
    try:
        return BudgetManager(
            config.budgets,
            store,
            settings,
            tier_order=config.tier_names,
            alerts=alerts,
            usage_source=usage_source,
        )
    except BaseException:
        await store.aclose()
        raise
