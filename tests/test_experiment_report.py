"""The experiment report's numbers: the intervals against scipy and hand computations, and
`tierwise experiment report` over a synthetic ledger + feedback store against numpy."""

from __future__ import annotations

import asyncio
import json
import math
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy import stats
from typer.testing import CliRunner

from tests.harness import config_dict
from tierwise.router.experiments.stats import bootstrap_mean_difference, proportion_difference, welch_interval
from tierwise.router.feedback.store import FeedbackRecord, SqliteFeedbackStore
from tierwise.router.ledger.record import SpendRecord
from tierwise.router.ledger.sqlite_sink import SqliteSpendSink
from tierwise.training.cli.app import app

runner = CliRunner()


def test_welch_interval_matches_scipy() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.8, 0.1, 40), rng.normal(0.7, 0.3, 25)
    interval = welch_interval(list(a), list(b))
    reference = stats.ttest_ind(a, b, equal_var=False)
    ci = reference.confidence_interval(0.95)
    assert interval is not None
    assert interval.estimate == pytest.approx(a.mean() - b.mean())
    assert (interval.low, interval.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert interval.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert welch_interval([1.0], [1.0, 2.0]) is None
    constant = welch_interval([1.0, 1.0], [0.5, 0.5])
    assert constant is not None and constant.low == constant.high == 0.5 and constant.significant


def test_bootstrap_interval_agrees_with_scipy() -> None:
    rng = np.random.default_rng(11)
    a, b = rng.lognormal(-7, 1.0, 300), rng.lognormal(-6, 1.0, 200)  # skewed, like per-request cost
    interval = bootstrap_mean_difference(list(a), list(b), resamples=4000, seed=3)
    reference = stats.bootstrap(
        (a, b),
        lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        n_resamples=4000,
        method="percentile",
        random_state=np.random.default_rng(5),
    ).confidence_interval
    assert interval is not None
    assert interval.estimate == pytest.approx(a.mean() - b.mean())
    width = reference.high - reference.low
    assert abs(interval.low - reference.low) < 0.05 * width
    assert abs(interval.high - reference.high) < 0.05 * width
    assert interval.significant  # a's mean cost is e^-1 of b's: the CI is well below 0
    same = bootstrap_mean_difference([1.0, 2.0, 3.0] * 20, [1.0, 2.0, 3.0] * 20, seed=1)
    assert same is not None and not same.significant


def test_proportion_interval_by_hand() -> None:
    interval = proportion_difference(30, 100, 20, 100)
    se = math.sqrt(0.3 * 0.7 / 100 + 0.2 * 0.8 / 100)
    assert interval is not None
    assert interval.estimate == pytest.approx(0.1)
    assert (interval.low, interval.high) == pytest.approx(
        (0.1 - 1.959964 * se, 0.1 + 1.959964 * se), rel=1e-6
    )
    assert not interval.significant  # 0.1 +- 0.119 includes 0
    assert proportion_difference(0, 0, 1, 2) is None


def _records(arm: str, costs: list[str], latencies: list[float], hits: int, now: float) -> list[SpendRecord]:
    return [
        SpendRecord(
            request_id=f"{arm}-{i}",
            ts=now - 60 + i * 0.001,
            tenant="acme",
            experiment="exp1",
            arm=arm,
            tier="small",
            cost_usd=Decimal(cost),
            total_ms=latency,
            upstream_ms=latency / 2,
            attempts=0 if i < hits else 1,
            cache_result="exact" if i < hits else "miss",
        )
        for i, (cost, latency) in enumerate(zip(costs, latencies, strict=True))
    ]


def test_report_command_over_a_synthetic_ledger(tmp_path: Path) -> None:
    store = tmp_path / "var"
    experiment = {
        "name": "exp1",
        "control": "base",
        "arms": [{"name": "base", "weight": 1}, {"name": "cheap", "weight": 1, "policy": "cheapest"}],
    }
    data = config_dict(store, "http://127.0.0.1:1/v1", "http://127.0.0.1:1", experiments=[experiment])
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(data))
    rng = np.random.default_rng(1)
    now = time.time()
    base_costs = [f"{c:.9f}" for c in rng.uniform(0.001, 0.01, 60)]
    cheap_costs = [f"{c:.9f}" for c in rng.uniform(0.0001, 0.002, 50)]
    base_ms, cheap_ms = list(rng.uniform(100, 900, 60)), list(rng.uniform(50, 400, 50))
    records = _records("base", base_costs, base_ms, 6, now) + _records(
        "cheap", cheap_costs, cheap_ms, 10, now
    )
    # Left out: a request with a forced arm, another experiment's request, and an older one.
    records.append(
        SpendRecord(
            request_id="forced",
            ts=now - 1,
            tenant="acme",
            experiment="exp1",
            arm="cheap",
            tags={"tierwise-arm": "cheap"},
            cost_usd=Decimal(1),
            attempts=1,
        )
    )
    records.append(SpendRecord(request_id="other", ts=now - 1, tenant="acme", experiment="exp2", arm="cheap"))
    records.append(
        SpendRecord(request_id="old", ts=now - 7200, tenant="acme", experiment="exp1", arm="base", attempts=1)
    )
    sink = SqliteSpendSink(store / "spend.sqlite3")
    sink.write(records)
    sink.close()
    base_scores, cheap_scores = list(rng.uniform(0.6, 1.0, 40)), list(rng.uniform(0.4, 0.9, 30))
    feedback = SqliteFeedbackStore(store / "feedback.sqlite3")

    async def judge() -> None:
        for arm, scores in (("base", base_scores), ("cheap", cheap_scores)):
            for i, score in enumerate(scores):
                # Two judgments of one request average into its score.
                for offset in (-0.05, 0.05):
                    await feedback.record(FeedbackRecord(f"{arm}-{i}", "acme", score + offset, "judge"))
        await feedback.record(FeedbackRecord("base-0", "globex", 0.0, "app"))  # another tenant's: ignored
        await feedback.aclose()

    asyncio.run(judge())

    plot = tmp_path / "exp1.png"
    result = runner.invoke(
        app,
        [
            "experiment",
            "report",
            "exp1",
            "--config",
            str(config_file),
            "--since",
            "1h",
            "--json",
            "--plot",
            str(plot),
        ],
    )
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    arms = {a["arm"]: a for a in report["arms"]}
    assert report["forced_excluded"] == 1
    for arm, costs, latencies, hits, scores in (
        ("base", base_costs, base_ms, 6, base_scores),
        ("cheap", cheap_costs, cheap_ms, 10, cheap_scores),
    ):
        row = arms[arm]
        assert row["requests"] == len(costs)
        assert Decimal(row["cost_usd"]) == sum(map(Decimal, costs))
        assert Decimal(row["cost_per_request_usd"]) == sum(map(Decimal, costs)) / len(costs)
        assert row["p50_ms"] == pytest.approx(np.percentile(latencies, 50))
        assert row["p95_ms"] == pytest.approx(np.percentile(latencies, 95))
        assert row["cache_hit_rate"] == pytest.approx(hits / len(costs))
        assert row["judged"] == len(scores)
        assert row["quality"] == pytest.approx(np.mean(scores))
    (diff,) = report["vs_control"]
    reference = stats.ttest_ind(cheap_scores, base_scores, equal_var=False).confidence_interval(0.95)
    assert diff["quality"]["ci95"] == pytest.approx([reference.low, reference.high])
    assert diff["quality"]["significant"] == (reference.high < 0 or reference.low > 0)
    cost = diff["cost_per_request_usd"]
    assert cost["difference"] == pytest.approx(
        float(np.mean([float(c) for c in cheap_costs]) - np.mean([float(c) for c in base_costs]))
    )
    assert cost["ci95"][1] < 0 and cost["significant"]  # cheap costs far less
    assert diff["cache_hit_rate"]["difference"] == pytest.approx(10 / 50 - 6 / 60)
    assert plot.stat().st_size > 0

    table = runner.invoke(
        app, ["experiment", "report", "exp1", "--config", str(config_file), "--since", "1h"]
    )
    assert table.exit_code == 0 and "cheap" in table.stdout and "difference from control" in table.stdout


def test_report_errors_exit_2(tmp_path: Path) -> None:
    data = config_dict(tmp_path / "var", "http://127.0.0.1:1/v1", "http://127.0.0.1:1")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["experiment", "report", "nope", "--config", str(config_file)])
    assert result.exit_code == 2 and "no experiment 'nope'" in result.output
    result = runner.invoke(app, ["experiment", "report", "x", "--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "cannot read config" in result.output
