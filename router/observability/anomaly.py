"""Cost anomalies: hours in which a tenant (or a tenant's feature) spent far more than it usually does.

Each series is one key's spend per UTC hour. An hour is scored against the
hours before it only: the baseline is the median of the last ``window_hours``
hours, or, once ``seasonal_after_weeks`` weeks of history exist, the median of
the same hour-of-week in up to ``seasonal_weeks`` earlier weeks (so a Monday
9 am rush is compared with earlier Monday 9 ams, not with Sunday night). The
spread is robust (1.4826 x MAD, or the mean absolute deviation where the MAD is
zero) and floored at ``min_sigma_usd`` and ``min_sigma_ratio`` x baseline: one
odd hour does not inflate it, and a flat series does not flag a cent's change.
Only spend above the baseline is flagged; a quiet hour is not an alert.

``score_hours`` is the pure part; ``hourly_series`` builds the series from the
spend ledger's report query; ``AnomalyChecker`` runs both periodically in the
server and reports each flagged hour once, to listeners and a counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from tierwise.router.config import AnomalyConfig
from tierwise.router.ledger.reports import SpendReports
from tierwise.router.observability.metrics import Metrics

log = logging.getLogger("tierwise.anomaly")

HOUR_S = 3600
WEEK_H = 168
_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution x this = its standard deviation
_MEAN_AD_TO_SIGMA = 1.2533  # sqrt(pi / 2): the same for the mean absolute deviation
_HOUR_FORMAT = "%Y-%m-%dT%H:%MZ"  # the ledger's "hour" bucket, in every SQL dialect

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class HourScore:
    index: int  # the hour's position in its series
    cost: float
    baseline: float
    sigma: float
    z: float
    seasonal: bool  # compared with the same hour-of-week in earlier weeks


def _robust_sigma(values: FloatArray) -> float:
    center = float(np.median(values))
    deviations = np.abs(values - center)
    mad = float(np.median(deviations))
    if mad > 0:
        return _MAD_TO_SIGMA * mad
    return _MEAN_AD_TO_SIGMA * float(np.mean(deviations))


def _seasonal_expected(costs: FloatArray, weeks: int) -> FloatArray:
    """Per hour, the median of the same hour-of-week in up to ``weeks`` earlier weeks (NaN: none)."""
    n = len(costs)
    earlier = np.full((weeks, n), np.nan)
    for k in range(1, weeks + 1):
        lag = k * WEEK_H
        if lag < n:
            earlier[k - 1, lag:] = costs[: n - lag]
    expected = np.full(n, np.nan)
    if n > WEEK_H:
        expected[WEEK_H:] = np.nanmedian(earlier[:, WEEK_H:], axis=0)
    return expected


def score_hours(
    costs: Sequence[float] | FloatArray, settings: AnomalyConfig, first: int = 0
) -> list[HourScore]:
    """Score each hour from index ``first`` on against the hours before it.

    Hours with fewer than ``min_history_hours`` hours before them are left out.
    """
    x = np.asarray(costs, dtype=np.float64)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise ValueError("costs must be a flat sequence of finite numbers")
    window = settings.window_hours
    seasonal_from = settings.seasonal_after_weeks * WEEK_H
    expected = _seasonal_expected(x, settings.seasonal_weeks) if len(x) > seasonal_from else None
    scores = []
    for t in range(max(first, settings.min_history_hours), len(x)):
        if expected is not None and t >= seasonal_from:
            weeks = min(settings.seasonal_weeks, t // WEEK_H)
            same_hour = x[t - WEEK_H * weeks : t : WEEK_H]
            baseline = float(expected[t])
            # Earlier weeks give few values; the last window's residuals against their own
            # seasonal baselines give a steadier spread. Take the wider of the two.
            start = max(0, t - window)
            residuals = x[start:t] - expected[start:t]
            residuals = residuals[np.isfinite(residuals)]
            sigma = max(_robust_sigma(same_hour), _robust_sigma(residuals) if len(residuals) else 0.0)
            seasonal = True
        else:
            history = x[max(0, t - window) : t]
            baseline = float(np.median(history))
            sigma = _robust_sigma(history)
            seasonal = False
        sigma = max(sigma, settings.min_sigma_usd, settings.min_sigma_ratio * abs(baseline))
        cost = float(x[t])
        scores.append(HourScore(t, cost, baseline, sigma, (cost - baseline) / sigma, seasonal))
    return scores


def history_hours(settings: AnomalyConfig) -> int:
    """Hours of spend before the first scored hour that a full (seasonal) score looks at."""
    return settings.window_hours + WEEK_H * settings.seasonal_weeks


# -- series from the ledger --------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeriesKey:
    tenant: str
    feature: str | None  # None: the tenant's total over its features


@dataclass(frozen=True, slots=True)
class HourlySeries:
    start_hour: int  # hours since the epoch (UTC) of costs[0]
    costs: tuple[float, ...]  # USD per hour, hours without spend included as 0

    def hour(self, index: int) -> datetime:
        return datetime.fromtimestamp((self.start_hour + index) * HOUR_S, UTC)


@functools.lru_cache(maxsize=4096)  # one parse per hour label: a report repeats each in every group
def _epoch_hour(bucket: str) -> int:
    moment = datetime.strptime(bucket, _HOUR_FORMAT).replace(tzinfo=UTC)
    return int(moment.timestamp()) // HOUR_S


async def hourly_series(
    reports: SpendReports,
    since: float,
    until: float,
    *,
    by_feature: bool = True,
    tenant: str | None = None,
) -> dict[SeriesKey, HourlySeries]:
    """Spend per hour in [since, until) for each tenant (and tenant + feature), from one report query.

    A series starts at its key's first hour with spend and runs to the hour holding ``until``.
    """
    filters = {"tenant": tenant} if tenant is not None else None
    rows = await reports.totals(since, until, ["tenant", "feature", "hour"], filters)
    spent: dict[SeriesKey, dict[int, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for row in rows:
        hour = _epoch_hour(row.group["hour"])
        keys = [SeriesKey(row.group["tenant"], None)]
        if by_feature:
            keys.append(SeriesKey(row.group["tenant"], row.group["feature"]))
        for key in keys:
            spent[key][hour] += row.cost_usd
    last = math.ceil(until / HOUR_S) - 1
    out = {}
    for key, by_hour in spent.items():
        first = min(by_hour)
        costs = tuple(float(by_hour.get(h, 0)) for h in range(first, last + 1))
        out[key] = HourlySeries(first, costs)
    return out


# -- flagged hours -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Anomaly:
    tenant: str
    feature: str | None  # None: the tenant's total
    hour: datetime  # the hour's start, UTC
    cost_usd: float
    baseline_usd: float
    sigma_usd: float
    z: float
    seasonal: bool

    def describe(self) -> str:
        who = self.tenant if self.feature is None else f"{self.tenant}/{self.feature or '(none)'}"
        basis = "same hour in earlier weeks" if self.seasonal else "recent hours"
        return (
            f"cost anomaly: {who} spent {self.cost_usd:.4f} USD in the hour from {self.hour:%Y-%m-%d %H:00Z}, "
            f"baseline {self.baseline_usd:.4f} USD ({basis}), z = {self.z:.1f}"
        )


def detect(
    series: Mapping[SeriesKey, HourlySeries], settings: AnomalyConfig, *, since_hour: int = 0
) -> list[Anomaly]:
    """Flagged hours at or after ``since_hour`` (hours since the epoch), oldest first."""
    found = []
    for key, s in series.items():
        first = max(0, since_hour - s.start_hour)
        for score in score_hours(s.costs, settings, first):
            if score.z > settings.threshold_z:
                found.append(
                    Anomaly(
                        key.tenant,
                        key.feature,
                        s.hour(score.index),
                        score.cost,
                        score.baseline,
                        score.sigma,
                        score.z,
                        score.seasonal,
                    )
                )
    found.sort(key=lambda a: (a.hour, a.tenant, a.feature is not None, a.feature or ""))
    return found


async def find_anomalies(
    reports: SpendReports,
    settings: AnomalyConfig,
    since: float,
    until: float,
    *,
    tenant: str | None = None,
) -> list[Anomaly]:
    """Flagged hours from ``since`` to ``until``, each scored with the history before it."""
    since_hour = int(since // HOUR_S)
    start = (since_hour - history_hours(settings)) * HOUR_S
    series = await hourly_series(reports, start, until, by_feature=settings.by_feature, tenant=tenant)
    return detect(series, settings, since_hour=since_hour)


AnomalyListener = Callable[[Anomaly], None]


class AnomalyChecker:
    """Scores the last complete hour and the current one every ``check_interval_s``.

    The current hour is partial, but its spend can only grow, so a flag on it stands
    and arrives before the hour is over. Each (tenant, feature, hour) is reported once.
    """

    def __init__(
        self,
        reports: SpendReports,
        settings: AnomalyConfig,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._reports = reports
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._listeners: list[AnomalyListener] = []
        self._reported: set[tuple[str, str | None, datetime]] = set()
        self._task: asyncio.Task[None] | None = None

    def add_listener(self, listener: AnomalyListener) -> None:
        self._listeners.append(listener)

    async def check(self) -> list[Anomaly]:
        """One pass; returns the anomalies not reported before (and reports them)."""
        now = self._clock()
        since = (int(now // HOUR_S) - 1) * HOUR_S
        found = await find_anomalies(self._reports, self._settings, since, now)
        new = [a for a in found if (a.tenant, a.feature, a.hour) not in self._reported]
        cutoff = datetime.fromtimestamp(since, UTC)
        self._reported = {k for k in self._reported if k[2] >= cutoff}
        for anomaly in new:
            self._reported.add((anomaly.tenant, anomaly.feature, anomaly.hour))
            self._report(anomaly)
        return new

    def _report(self, anomaly: Anomaly) -> None:
        log.warning(anomaly.describe(), extra={"tenant": anomaly.tenant, "feature": anomaly.feature})
        if self._metrics is not None:
            self._metrics.observe_anomaly(anomaly.tenant, anomaly.feature)
        for listener in self._listeners:
            try:
                listener(anomaly)
            except Exception:
                log.exception("cost anomaly listener failed", extra={"tenant": anomaly.tenant})

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception as exc:  # the store may be down; the next pass tries again
                log.warning("cost anomaly check failed", extra={"error": repr(exc)})
            await asyncio.sleep(self._settings.check_interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="cost-anomaly-checker")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
