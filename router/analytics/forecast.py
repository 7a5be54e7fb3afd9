"""Month-end spend per tenant, and the day each budget is projected to run out.

The model sees each key's spend per completed UTC day over the trailing
``history_days`` (from the key's first day with spend; quiet days count as 0),
fitted by Holt's linear smoothing (``tierwise.router.analytics.holt``). The rest of today
is the first forecast day times the share of today still to come; the days after
it follow the forecast path (never below zero). Money already spent is exact
(the ledger's Decimal sums); projections are rounded to the cent.
"""

from __future__ import annotations

import calendar
import functools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np

from tierwise.router.analytics.holt import HoltFit, fit_holt
from tierwise.router.config import BudgetConfig
from tierwise.router.ledger.reports import SpendReports
from tierwise.router.pricing import total_usd

DAY_S = 86400
_CENT = Decimal("0.01")
_Z = {0.8: 1.2816, 0.9: 1.6449, 0.95: 1.9600}

SeriesKey = tuple[str, str | None]  # (tenant, feature); None: all of the tenant's features


@dataclass(frozen=True, slots=True)
class DailySpend:
    """Per key: completed days' spend (floats, for the model) and today's and this month's (exact)."""

    days: Mapping[SeriesKey, tuple[float, ...]]
    today: Mapping[SeriesKey, Decimal]
    month_to_date: Mapping[SeriesKey, Decimal]
    now: float


@functools.lru_cache(maxsize=1024)  # one parse per day label: a report repeats each in every group
def _day_index(bucket: str) -> int:
    return int(datetime.strptime(bucket, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()) // DAY_S


async def daily_spend(
    reports: SpendReports, now: float, *, history_days: int = 28, tenant: str | None = None
) -> DailySpend:
    """One report query by tenant, feature and day over the history and the current month."""
    today = int(now // DAY_S)
    month_start = _month_start(now)
    since = min((today - history_days) * DAY_S, month_start)
    filters = {"tenant": tenant} if tenant is not None else None
    rows = await reports.totals(since, now, ["tenant", "feature", "day"], filters)
    per_day: dict[SeriesKey, dict[int, list[Decimal]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        day = _day_index(row.group["day"])
        keys: tuple[SeriesKey, SeriesKey] = (
            (row.group["tenant"], None),
            (row.group["tenant"], row.group["feature"]),
        )
        for key in keys:
            per_day[key][day].append(row.cost_usd)
    history_start = today - history_days
    days: dict[SeriesKey, tuple[float, ...]] = {}
    spent_today: dict[SeriesKey, Decimal] = {}
    month: dict[SeriesKey, Decimal] = {}
    for key, by_day in per_day.items():
        completed = [d for d in by_day if history_start <= d < today]
        first = min(completed) if completed else today
        days[key] = tuple(float(total_usd(by_day.get(d, []))) for d in range(first, today))
        spent_today[key] = total_usd(by_day.get(today, []))
        month[key] = total_usd(
            a for d, amounts in by_day.items() if d * DAY_S >= month_start for a in amounts
        )
    return DailySpend(days, spent_today, month, now)


def _month_start(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()


def days_left_in_month(now: float) -> int:
    """Whole days after today until the month ends."""
    moment = datetime.fromtimestamp(now, UTC)
    return calendar.monthrange(moment.year, moment.month)[1] - moment.day


def _weights(now: float, steps: int) -> list[float]:
    """Day k's share in what is still to come: the rest of today, then whole days."""
    rest_of_today = 1.0 - (now % DAY_S) / DAY_S
    return [rest_of_today] + [1.0] * (steps - 1)


def _cents(value: float | Decimal) -> Decimal:
    return Decimal(repr(value) if isinstance(value, float) else value).quantize(_CENT)


@dataclass(frozen=True, slots=True)
class MonthEndForecast:
    tenant: str
    month_to_date_usd: Decimal  # exact
    forecast_usd: Decimal  # month-end total, to the cent
    low_usd: Decimal
    high_usd: Decimal
    daily_trend_usd: Decimal  # the fitted change in daily spend per day
    method: str  # holt | mean | none (no completed day yet: today's spend only)
    history_days: int

    def as_dict(self) -> dict[str, object]:
        return {
            "tenant": self.tenant,
            "month_to_date_usd": str(self.month_to_date_usd),
            "forecast_usd": str(self.forecast_usd),
            "low_usd": str(self.low_usd),
            "high_usd": str(self.high_usd),
            "daily_trend_usd": str(self.daily_trend_usd),
            "method": self.method,
            "history_days": self.history_days,
        }


def _fit(series: Sequence[float]) -> HoltFit | None:
    return fit_holt(series) if series else None


def month_end(spend: DailySpend, tenant: str, level: float = 0.9) -> MonthEndForecast:
    """Month-end spend of ``tenant`` with a central ``level`` interval (0.8, 0.9 or 0.95)."""
    if level not in _Z:
        raise ValueError(f"interval level must be one of {sorted(_Z)}, got {level}")
    key = (tenant, None)
    spent = spend.month_to_date.get(key, Decimal(0))
    fit = _fit(spend.days.get(key, ()))
    if fit is None:
        return MonthEndForecast(
            tenant, spent, _cents(spent), _cents(spent), _cents(spent), Decimal(0), "none", 0
        )
    steps = days_left_in_month(spend.now) + 1
    weights = _weights(spend.now, steps)
    ahead = float(np.dot(weights, np.maximum(fit.path(steps), 0.0)))
    half = _Z[level] * fit.sum_sigma(weights)
    central = float(spent) + ahead
    return MonthEndForecast(
        tenant,
        spent,
        _cents(central),
        _cents(max(float(spent), central - half)),  # cannot end below what is already spent
        _cents(central + half),
        _cents(fit.trend),
        fit.method,
        fit.points,
    )


@dataclass(frozen=True, slots=True)
class BudgetProjection:
    budget: str
    window: str
    limit_usd: Decimal  # the hard limit, else the soft one
    used_usd: Decimal  # spent in the current window, from the ledger
    projected_usd: Decimal  # at the window's end, to the cent
    runs_out: date | None  # the first day the projected spend reaches the limit; None: not this window

    def as_dict(self) -> dict[str, object]:
        return {
            "budget": self.budget,
            "window": self.window,
            "limit_usd": str(self.limit_usd),
            "used_usd": str(self.used_usd),
            "projected_usd": str(self.projected_usd),
            "burn": round(float(self.used_usd / self.limit_usd), 4),
            "runs_out": None if self.runs_out is None else self.runs_out.isoformat(),
        }


def project_budget(spend: DailySpend, budget: BudgetConfig) -> BudgetProjection | None:
    """USD budgets only (a token-only budget is skipped); None when it has no USD limit, or is an API
    key's (the daily spend series are per tenant, and a tenant's would overstate the key's)."""
    limit = budget.usd if budget.usd is not None else budget.soft_usd
    if limit is None or budget.key is not None:
        return None
    key = (budget.tenant, budget.feature)
    used = (
        spend.today.get(key, Decimal(0))
        if budget.window == "day"
        else spend.month_to_date.get(key, Decimal(0))
    )
    steps = 1 if budget.window == "day" else days_left_in_month(spend.now) + 1
    fit = _fit(spend.days.get(key, ()))
    path = np.maximum(fit.path(steps), 0.0) if fit is not None else np.zeros(steps)
    cumulative = float(used) + np.cumsum(np.asarray(_weights(spend.now, steps)) * path)
    today = datetime.fromtimestamp(spend.now, UTC).date()
    runs_out = None
    if used >= limit:
        runs_out = today
    else:
        reached = np.nonzero(cumulative >= float(limit))[0]
        if len(reached):
            runs_out = today + timedelta(days=int(reached[0]))
    return BudgetProjection(budget.name, budget.window, limit, used, _cents(float(cumulative[-1])), runs_out)


def tenants_of(spend: DailySpend) -> list[str]:
    return sorted({tenant for tenant, feature in spend.days if feature is None})
