"""The budget-store axis: atomic check-and-reserve, settle and release over budget windows.

Money crosses this interface as integer nano-dollars (1e-9 USD): both stores
then do exact integer arithmetic (Redis's Lua numbers are doubles, exact to
2**53 nano-dollars, about 9 million USD per window). Estimates and actual
costs are rounded up to the next nano-dollar and limits down, so rounding
can only make a budget stricter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Literal, Protocol, runtime_checkable

NANOS_PER_USD = Decimal(1_000_000_000)
# A window's records are kept this long after it ends (reports of the last window can still read it).
WINDOW_RETENTION = timedelta(days=2)

Window = Literal["day", "month"]


def usd_to_nanos(usd: Decimal, *, round_up: bool) -> int:
    scaled = usd * NANOS_PER_USD
    return int(scaled.to_integral_value(rounding=ROUND_CEILING if round_up else ROUND_FLOOR))


def nanos_to_usd(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS_PER_USD


@dataclass(frozen=True, slots=True)
class Period:
    """One calendar window (UTC) of a budget."""

    key: str  # "2025-03-04" for a day, "2025-03" for a month
    start: datetime
    end: datetime  # exclusive: when the budget resets

    @classmethod
    def containing(cls, window: Window, now: datetime) -> Period:
        now = now.astimezone(UTC)
        if window == "day":
            start = datetime(now.year, now.month, now.day, tzinfo=UTC)
            return cls(start.strftime("%Y-%m-%d"), start, start + timedelta(days=1))
        start = datetime(now.year, now.month, 1, tzinfo=UTC)
        end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
        return cls(start.strftime("%Y-%m"), start, end)


@dataclass(frozen=True, slots=True)
class Amount:
    usd_nanos: int = 0
    tokens: int = 0

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.usd_nanos + other.usd_nanos, self.tokens + other.tokens)


@dataclass(frozen=True, slots=True)
class Limit:
    """Hard limits of one budget; None: no limit in that unit."""

    usd_nanos: int | None = None
    tokens: int | None = None

    def exceeded_by(self, total: Amount) -> bool:
        return (self.usd_nanos is not None and total.usd_nanos > self.usd_nanos) or (
            self.tokens is not None and total.tokens > self.tokens
        )


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One budget in one period, as a reservation touches it."""

    budget: str  # BudgetConfig.name: "tenant/feature-or-*/window"
    tenant: str  # groups a tenant's keys (one Redis Cluster slot for an atomic multi-budget script)
    period: str
    hard: Limit
    expires_at: float  # unix time after which the period's records may be dropped


@dataclass(frozen=True, slots=True)
class LineState:
    used: Amount  # settled spend
    in_flight: Amount  # unexpired reservations

    @property
    def committed(self) -> Amount:
        return self.used + self.in_flight


@dataclass(frozen=True, slots=True)
class ReserveResult:
    states: tuple[LineState, ...]  # per line, before this reservation
    refused: int | None = None  # index of the first line whose hard limit the reservation would pass
    # Indexes of lines whose period has no seed mark (the store lost or never had its usage):
    # nothing was reserved, and ``states`` is empty; seed them, then reserve again.
    unseeded: tuple[int, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.refused is None and not self.unseeded


@dataclass(frozen=True, slots=True)
class SettleResult:
    used: tuple[Amount, ...]  # per line, after this call
    applied: bool = True  # False: the reservation was settled or released before, so nothing changed


class BudgetStore(Protocol):
    """Every method is atomic over all ``lines`` it is given; ``now`` is unix time."""

    name: str  # for messages: "SQLite at var/budgets.sqlite3", "Redis at redis://..."

    async def reserve(
        self, reservation_id: str, lines: Sequence[BudgetLine], amount: Amount, now: float, ttl_s: float
    ) -> ReserveResult:
        """Reserve ``amount`` on every line unless one's used + in-flight + amount passes its hard limit."""
        ...

    async def settle(
        self, reservation_id: str, lines: Sequence[BudgetLine], actual: Amount, now: float, keep_s: float
    ) -> SettleResult:
        """Drop the reservation (if still there) and add ``actual`` to used, once per reservation id:
        an id settled or released before is left alone (``applied`` False). Finished ids are
        remembered ``keep_s`` (the reservation TTL), which bounds the memory they take."""
        ...

    async def release(
        self, reservation_id: str, lines: Sequence[BudgetLine], now: float, keep_s: float
    ) -> bool:
        """Drop the reservation without spend; False (a no-op) when the id was settled or released before."""
        ...

    async def usage(self, lines: Sequence[BudgetLine], now: float) -> tuple[LineState, ...]: ...

    async def mark_alerts(self, line: BudgetLine, marks: Sequence[str], now: float) -> tuple[str, ...]:
        """Set the marks on ``line``'s period; returns those no one had set before (fire once)."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SeededBudgetStore(BudgetStore, Protocol):
    """A store that can lose its usage (Redis restarted empty, evicted keys): each period carries a
    seed mark, and ``reserve`` refuses to reserve on a line without one (``ReserveResult.unseeded``)
    until ``seed`` has set that line's settled spend from a durable source."""

    async def seed(self, lines: Sequence[BudgetLine], used: Sequence[Amount], now: float) -> tuple[bool, ...]:
        """Raise each line's settled spend to at least ``used`` and set its mark, atomically per line
        and only where the mark is absent; per line, whether this call seeded it (False: another did)."""
        ...

    async def unseeded(self, lines: Sequence[BudgetLine]) -> tuple[int, ...]:
        """Indexes of the lines whose period has no seed mark."""
        ...
