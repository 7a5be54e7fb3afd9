"""Forecast and cost per quality: Holt's smoothing recovers a known linear trend exactly, the
month-end forecast and budget run-out follow from it by hand, and the interval covers noisy
truth; cost per judged quality divides the judged spend by the judged scores."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from tests.test_ledger import spend
from tierwise.router.analytics.forecast import daily_spend, month_end, project_budget
from tierwise.router.analytics.holt import fit_holt
from tierwise.router.analytics.quality import cost_per_quality
from tierwise.router.config import BudgetConfig
from tierwise.router.feedback.store import FeedbackRecord, SqliteFeedbackStore
from tierwise.router.ledger.reports import SinkReports
from tierwise.router.ledger.sqlite_sink import SqliteSpendSink

DAY = 86400
# 2024-03-15 12:00 UTC: 14 completed days this month, half of today left, 16 whole days after it.
NOW = datetime(2024, 3, 15, 12, tzinfo=UTC).timestamp()
START = datetime(2024, 2, 16, tzinfo=UTC).timestamp()  # 28 days of history before today


def linear(day: int) -> Decimal:
    """Spend on day ``day`` of the series: 2 USD rising by 0.25 USD a day."""
    return Decimal("2") + Decimal("0.25") * day


def test_holt_recovers_a_linear_trend() -> None:
    fit = fit_holt([float(linear(d)) for d in range(28)])
    assert fit.method == "holt"
    assert fit.trend == pytest.approx(0.25)
    assert fit.level == pytest.approx(float(linear(27)))
    assert fit.sigma == pytest.approx(0.0, abs=1e-9)
    assert fit.path(3) == pytest.approx([float(linear(d)) for d in (28, 29, 30)])


def test_holt_interval_covers_noisy_truth() -> None:
    rng = np.random.default_rng(3)
    days = np.arange(40)
    y = 5 + 0.5 * days + rng.normal(0, 0.4, 40)
    fit = fit_holt(y[:30])
    weights = np.ones(10)
    central = float(np.sum(fit.path(10)))
    half = 1.96 * fit.sum_sigma(weights)
    assert fit.trend == pytest.approx(0.5, abs=0.15)
    assert central - half <= float(np.sum(5 + 0.5 * days[30:])) <= central + half
    assert half > 1.96 * fit.sigma * np.sqrt(10)  # errors compound: wider than independent days
    with pytest.raises(ValueError, match="finite"):
        fit_holt([1.0, float("nan")])


@pytest.fixture
def linear_store(tmp_path: Path) -> Iterator[SqliteSpendSink]:
    sink = SqliteSpendSink(tmp_path / "spend.sqlite3")
    records = []
    for d in range(29):  # 28 completed days, then today (half over): 4 USD so far
        cost = linear(d) if d < 28 else Decimal("4")
        # Two requests a day at 06:00 and 07:00 (before NOW's 12:00 on the last day).
        records += [
            spend(2 * d, ts=START + d * DAY + 6 * 3600, tenant="acme", feature="chat", cost_usd=cost / 2),
            spend(2 * d + 1, ts=START + d * DAY + 7 * 3600, tenant="acme", feature="chat", cost_usd=cost / 2),
        ]
    sink.write(records)
    yield sink
    sink.close()


@pytest.mark.asyncio
async def test_month_end_forecast_on_a_linear_trend(linear_store: SqliteSpendSink) -> None:
    spend_ = await daily_spend(SinkReports(linear_store), NOW, history_days=28)
    assert spend_.days[("acme", None)] == tuple(float(linear(d)) for d in range(28))
    # March so far: days 14..27 of the series (Mar 1..14) and today's 4 USD.
    month_to_date = sum((linear(d) for d in range(14, 28)), Decimal("4"))
    assert spend_.month_to_date[("acme", None)] == month_to_date
    forecast = month_end(spend_, "acme")
    # By hand: half of today's forecast (day 28) plus Mar 16..31 (days 29..44).
    ahead = linear(28) / 2 + sum(linear(d) for d in range(29, 45))
    assert forecast.forecast_usd == (month_to_date + ahead).quantize(Decimal("0.01"))
    assert forecast.low_usd == forecast.high_usd == forecast.forecast_usd  # a perfect fit: no spread
    assert forecast.daily_trend_usd == Decimal("0.25")


@pytest.mark.asyncio
async def test_budget_run_out_day(linear_store: SqliteSpendSink) -> None:
    spend_ = await daily_spend(SinkReports(linear_store), NOW, history_days=28)
    used = spend_.month_to_date[("acme", None)]
    # Cumulative spend passes used + 40 USD during Mar 19: half of 9.0 (today), 9.25, 9.5, 9.75, 10.
    budget = BudgetConfig(tenant="acme", window="month", usd=used + Decimal(40))
    projection = project_budget(spend_, budget)
    assert projection is not None
    assert projection.used_usd == used
    assert projection.runs_out == date(2024, 3, 19)
    never = project_budget(spend_, BudgetConfig(tenant="acme", window="month", usd=Decimal(10_000)))
    assert never is not None and never.runs_out is None
    day = project_budget(spend_, BudgetConfig(tenant="acme", feature="chat", window="day", usd=Decimal(3)))
    assert day is not None and day.used_usd == Decimal(4) and day.runs_out == date(2024, 3, 15)
    assert project_budget(spend_, BudgetConfig(tenant="acme", window="day", tokens=5)) is None
    # A key's budget: the ledger cannot tell its spend from the tenant's, so no projection.
    assert (
        project_budget(spend_, BudgetConfig(tenant="acme", key="alice", window="day", usd=Decimal(3))) is None
    )


@pytest.mark.asyncio
async def test_cost_per_judged_quality(tmp_path: Path) -> None:
    sink = SqliteSpendSink(tmp_path / "spend.sqlite3")
    feedback = SqliteFeedbackStore(tmp_path / "feedback.sqlite3")
    try:
        sink.write(
            [
                spend(1, tier="small", arm="a", cost_usd=Decimal("0.01")),
                spend(2, tier="small", arm="b", cost_usd=Decimal("0.03")),
                spend(3, tier="large", arm="a", cost_usd=Decimal("0.5")),
                spend(4, tier="large", arm="b", cost_usd=Decimal("0.7")),  # never judged
            ]
        )
        for request_id, score in [
            ("req-00001", 0.4),
            ("req-00001", 0.6),
            ("req-00002", 0.25),
            ("req-00003", 1.0),
        ]:
            await feedback.record(FeedbackRecord(request_id, "acme", score, "judge"))
        # Another tenant's feedback on the same request id does not count.
        await feedback.record(FeedbackRecord("req-00003", "globex", 0.0, "judge"))
        rows = await cost_per_quality(SinkReports(sink), feedback, 0, 2e9)
    finally:
        sink.close()
        await feedback.aclose()
    got = {(r.dimension, r.value): r for r in rows}
    assert list(got) == [("tier", "large"), ("tier", "small"), ("arm", "a"), ("arm", "b")]
    small = got[("tier", "small")]
    assert (small.requests, small.judged, small.spend_usd) == (2, 2, Decimal("0.04"))
    assert small.mean_quality == pytest.approx((0.5 + 0.25) / 2)
    assert small.usd_per_quality == Decimal("0.053333333")  # 0.04 / 0.75, to 9 places
    large = got[("tier", "large")]
    assert (large.judged, large.judged_spend_usd, large.usd_per_quality) == (
        1,
        Decimal("0.5"),
        Decimal("0.5"),
    )
    arm_b = got[("arm", "b")]
    assert (arm_b.requests, arm_b.judged, arm_b.usd_per_quality) == (2, 1, Decimal("0.12"))
