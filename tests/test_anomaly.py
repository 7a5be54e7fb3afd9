"""Cost anomalies: robust hourly z-scores, hour-of-week seasonality, series from a real SQLite ledger."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families
from typer import Typer
from typer.testing import CliRunner

from tierwise.router.analytics.source import parse_since
from tierwise.router.config import AnomalyConfig, ConfigError, parse_config
from tierwise.router.ledger.record import SpendRecord
from tierwise.router.ledger.reports import SinkReports
from tierwise.router.ledger.spend_ledger import SpendLedger
from tierwise.router.ledger.sql import SpendTotals
from tierwise.router.ledger.sqlite_sink import SqliteSpendSink
from tierwise.router.observability.anomaly import (
    HOUR_S,
    WEEK_H,
    Anomaly,
    AnomalyChecker,
    FloatArray,
    SeriesKey,
    find_anomalies,
    history_hours,
    hourly_series,
    score_hours,
)
from tierwise.router.observability.metrics import Metrics
from tierwise.training.cli.anomalies import anomalies

SETTINGS = AnomalyConfig()
MONDAY = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday, 00:00 UTC
MONDAY_9AM = 9  # hour-of-week index when the series starts on a Monday at midnight


def noisy(hours: int, level: float, sd: float, seed: int) -> FloatArray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(level, sd, hours), 0.0, None)


def flagged(
    costs: Sequence[float] | FloatArray, settings: AnomalyConfig = SETTINGS, first: int = 0
) -> list[int]:
    return [s.index for s in score_hours(costs, settings, first) if s.z > settings.threshold_z]


def test_an_injected_spike_is_flagged_and_nothing_else() -> None:
    costs = noisy(240, 1.0, 0.1, seed=1)
    costs[200] = 3.0
    assert flagged(costs) == [200]
    score = next(s for s in score_hours(costs, SETTINGS) if s.index == 200)
    assert 0.9 < score.baseline < 1.1
    assert not score.seasonal


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_a_steady_noisy_series_is_not_flagged(seed: int) -> None:
    assert flagged(noisy(400, 5.0, 0.5, seed)) == []


def test_a_flat_series_does_not_flag_a_tiny_change_but_does_flag_a_real_one() -> None:
    flat = [1.0] * 100
    assert flagged([*flat, 1.02]) == []  # the spread floor keeps z small
    assert flagged([*flat, 2.0]) == [100]
    idle = [0.0] * 100
    assert flagged([*idle, 0.004]) == []  # below the absolute floor
    assert flagged([*idle, 1.0]) == [100]


def test_hours_without_enough_history_are_not_scored() -> None:
    costs = [1.0] * 10 + [50.0]
    assert score_hours(costs, SETTINGS) == []
    settings = SETTINGS.model_copy(update={"min_history_hours": 5})
    assert flagged(costs, settings) == [10]


def test_a_drop_in_spend_is_not_flagged() -> None:
    costs = noisy(200, 1.0, 0.05, seed=5)
    costs[150] = 0.0
    assert flagged(costs) == []


def test_a_high_but_normal_monday_9am_is_not_flagged_once_seasonal() -> None:
    weeks = 6
    costs = noisy(weeks * WEEK_H, 1.0, 0.05, seed=6)
    rng = np.random.default_rng(7)
    mondays = [w * WEEK_H + MONDAY_9AM for w in range(weeks)]
    costs[mondays] = rng.normal(10.0, 0.5, weeks)
    wednesday_2pm = 5 * WEEK_H + 2 * 24 + 14
    costs[wednesday_2pm] = 4.0  # a spike at an hour that is usually quiet

    scores = {s.index: s for s in score_hours(costs, SETTINGS)}
    seasonal_from = SETTINGS.seasonal_after_weeks * WEEK_H
    # Before three weeks of history the Monday rush is compared with recent hours: flagged.
    assert scores[mondays[1]].z > SETTINGS.threshold_z and not scores[mondays[1]].seasonal
    # From then on it is compared with earlier Mondays at 9 am: normal.
    for monday in mondays[3:]:
        assert scores[monday].seasonal
        assert scores[monday].z < SETTINGS.threshold_z
        assert 9.0 < scores[monday].baseline < 11.0
    assert [i for i in flagged(costs, first=seasonal_from)] == [wednesday_2pm]


def test_the_seasonal_baseline_ignores_a_spike_in_an_earlier_week() -> None:
    costs = noisy(5 * WEEK_H, 2.0, 0.1, seed=8)
    costs[2 * WEEK_H + 30] = 40.0  # flagged when it happened
    costs[4 * WEEK_H + 30] = 2.1  # the same hour two weeks later: normal again
    assert flagged(costs) == [2 * WEEK_H + 30]


def test_score_hours_refuses_non_finite_costs() -> None:
    with pytest.raises(ValueError, match="finite"):
        score_hours([1.0, float("nan")], SETTINGS)


def test_anomaly_settings_are_validated() -> None:
    tiers = [{"name": "small", "provider": "openai", "base_url": "http://127.0.0.1:1", "model": "m"}]
    with pytest.raises(ConfigError, match="min_history_hours"):
        parse_config({"tiers": tiers, "anomaly": {"window_hours": 24, "min_history_hours": 48}})
    with pytest.raises(ConfigError, match="seasonal_weeks"):
        parse_config({"tiers": tiers, "anomaly": {"seasonal_after_weeks": 4, "seasonal_weeks": 2}})
    assert parse_config({"tiers": tiers}).anomaly == AnomalyConfig()


# -- from the spend ledger -------------------------------------------------------------------------

START = MONDAY.timestamp()
SPIKE_HOUR = 60  # hours after START


def record(n: int, hour: int, tenant: str, feature: str, cost: str) -> SpendRecord:
    return SpendRecord(
        request_id=f"{tenant}-{feature}-{n}",
        ts=START + hour * HOUR_S + (n % 100) * 10.0,  # within the first 1000 s of the hour
        tenant=tenant,
        feature=feature,
        tier="small",
        model="small-model",
        provider="openai",
        cost_usd=Decimal(cost),
        attempts=1,
    )


def traffic() -> list[SpendRecord]:
    """Three days of steady spend for two tenants; acme/chat spends 20x in one hour."""
    out: list[SpendRecord] = []
    rng = np.random.default_rng(9)
    n = 0
    for hour in range(72):
        for tenant, feature in (("acme", "chat"), ("acme", "search"), ("beta", "chat")):
            calls = int(rng.integers(8, 12))
            if (tenant, feature, hour) == ("acme", "chat", SPIKE_HOUR):
                calls = 200
            for _ in range(calls):
                out.append(record(n, hour, tenant, feature, "0.0125"))
                n += 1
    return out


@pytest_asyncio.fixture
async def ledger(tmp_path: Path) -> SpendLedger:
    ledger = SpendLedger(tmp_path / "ledger", SqliteSpendSink(tmp_path / "spend.sqlite3"), batch_size=1000)
    await ledger.start()
    for rec in traffic():
        ledger.record(rec)
    assert await ledger.flush(timeout_s=30)
    return ledger


@pytest.mark.asyncio
async def test_series_built_from_the_ledger_flag_the_spiking_tenant_and_feature(ledger: SpendLedger) -> None:
    try:
        until = START + 72 * HOUR_S
        series = await hourly_series(ledger, START, until)
        assert set(series) == {
            SeriesKey("acme", None),
            SeriesKey("acme", "chat"),
            SeriesKey("acme", "search"),
            SeriesKey("beta", None),
            SeriesKey("beta", "chat"),
        }
        acme, chat = series[SeriesKey("acme", None)], series[SeriesKey("acme", "chat")]
        assert acme.start_hour == int(START) // HOUR_S and len(acme.costs) == 72
        assert chat.costs[SPIKE_HOUR] == pytest.approx(200 * 0.0125)
        assert acme.costs[SPIKE_HOUR] == pytest.approx(
            chat.costs[SPIKE_HOUR] + series[SeriesKey("acme", "search")].costs[SPIKE_HOUR]
        )

        found = await find_anomalies(ledger, SETTINGS, START, until)
        assert [(a.tenant, a.feature, a.hour) for a in found] == [
            ("acme", None, datetime.fromtimestamp(START + SPIKE_HOUR * HOUR_S, UTC)),
            ("acme", "chat", datetime.fromtimestamp(START + SPIKE_HOUR * HOUR_S, UTC)),
        ]
        assert found[1].cost_usd == pytest.approx(2.5) and found[1].baseline_usd == pytest.approx(0.125)
        assert "acme/chat" in found[1].describe()

        only_totals = SETTINGS.model_copy(update={"by_feature": False})
        assert [a.feature for a in await find_anomalies(ledger, only_totals, START, until)] == [None]
        assert await find_anomalies(ledger, SETTINGS, START, until, tenant="beta") == []
    finally:
        await ledger.aclose()


@pytest.mark.asyncio
async def test_the_checker_reports_each_flagged_hour_once_to_listeners_and_the_counter(
    ledger: SpendLedger,
) -> None:
    metrics = Metrics()
    seen: list[Anomaly] = []

    def broken(anomaly: Anomaly) -> None:
        raise RuntimeError("listener bug")

    now = START + (SPIKE_HOUR + 1) * HOUR_S + 600  # ten minutes into the hour after the spike
    checker = AnomalyChecker(ledger, SETTINGS, metrics=metrics, clock=lambda: now)
    checker.add_listener(broken)  # a failing listener neither stops the others nor the check
    checker.add_listener(seen.append)
    try:
        first = await checker.check()
        assert [(a.tenant, a.feature) for a in first] == [("acme", None), ("acme", "chat")]
        assert seen == first
        assert await checker.check() == []  # already reported
        assert len(seen) == 2
    finally:
        await ledger.aclose()
    counts = {
        (s.labels["tenant"], s.labels["feature"]): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        if family.name == "tierwise_cost_anomalies"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert counts == {("acme", "*"): 1.0, ("acme", "chat"): 1.0}


class FlakyReports:
    """A report source whose first query fails, as a store that is briefly down."""

    def __init__(self, inner: SinkReports) -> None:
        self.inner = inner
        self.calls = 0

    async def totals(
        self, since: float, until: float, by: Sequence[str] = (), filters: Mapping[str, str] | None = None
    ) -> list[SpendTotals]:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("spend store unreachable")
        return await self.inner.totals(since, until, by, filters)


@pytest.mark.asyncio
async def test_the_periodic_checker_survives_a_failing_store_and_reports_on_the_next_pass(
    tmp_path: Path,
) -> None:
    sink = SqliteSpendSink(tmp_path / "spend.sqlite3")
    sink.write(traffic())
    reports = FlakyReports(SinkReports(sink))
    now = START + SPIKE_HOUR * HOUR_S + 1800  # the spike hour is still going on
    checker = AnomalyChecker(
        reports, SETTINGS.model_copy(update={"check_interval_s": 0.01}), clock=lambda: now
    )
    reported = asyncio.Event()
    checker.add_listener(lambda anomaly: reported.set())
    checker.start()
    try:
        await asyncio.wait_for(reported.wait(), 10)
    finally:
        await checker.aclose()
        sink.close()
    assert reports.calls >= 2


def test_history_reaches_back_far_enough_for_seasonal_residuals() -> None:
    assert history_hours(SETTINGS) == SETTINGS.window_hours + SETTINGS.seasonal_weeks * WEEK_H


# -- the command ---------------------------------------------------------------------------------


def test_parse_since() -> None:
    now = 1_000_000.0
    assert parse_since("36h", now) == now - 36 * 3600
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("2w", now) == now - 14 * 86400
    assert parse_since("2024-01-01", now) == START
    assert parse_since("2024-01-01T01:00:00+01:00", now) == START
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday", now)


def write_config(tmp_path: Path, **ledger: object) -> Path:
    path = tmp_path / "tierwise.yaml"
    config = {
        "tiers": [{"name": "small", "provider": "openai", "base_url": "http://127.0.0.1:1", "model": "m"}],
        "store": {"path": str(tmp_path / "var")},
        "ledger": ledger,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def cli() -> Typer:
    app = Typer()
    app.command()(anomalies)
    return app


def test_the_command_prints_the_flagged_hours(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    now = time.time()
    base = (int(now) // HOUR_S - 72) * HOUR_S  # three days ago, on the hour
    sink = SqliteSpendSink(tmp_path / "var" / "spend.sqlite3")
    sink.write([dataclasses.replace(r, ts=r.ts - START + base) for r in traffic()])
    sink.close()
    runner = CliRunner()
    result = runner.invoke(cli(), ["--config", str(config), "--since", "3d"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    spike = datetime.fromtimestamp(base + SPIKE_HOUR * HOUR_S, UTC)
    lines = [line for line in result.output.splitlines() if f"{spike:%Y-%m-%d %H:00}" in line]
    assert len(lines) == 2 and all("acme" in line for line in lines)
    assert any("chat" in line and "2.5000" in line for line in lines)
    assert "2 flagged hour(s)" in result.output

    quiet = runner.invoke(cli(), ["--config", str(config), "--tenant", "beta"], env={"COLUMNS": "200"})
    assert quiet.exit_code == 0 and "no cost anomalies" in quiet.output
    lax = runner.invoke(cli(), ["--config", str(config), "--threshold", "1000"], env={"COLUMNS": "200"})
    assert lax.exit_code == 0 and "no cost anomalies" in lax.output


def test_the_command_explains_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    bad_since = runner.invoke(cli(), ["--config", str(write_config(tmp_path)), "--since", "soon"])
    assert bad_since.exit_code == 2 and "--since" in bad_since.output
    no_ledger = runner.invoke(cli(), ["--config", str(write_config(tmp_path, enabled=False))])
    assert no_ledger.exit_code == 2 and "ledger" in no_ledger.output
    missing = runner.invoke(cli(), ["--config", str(tmp_path / "absent.yaml")])
    assert missing.exit_code == 2 and "cannot read config" in missing.output
