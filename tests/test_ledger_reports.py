"""Spend stores: idempotent writes, exact Decimal sums, grouping by column, time bucket and tag.

``check_store`` pins the behaviour every ``SpendSink`` must share; this file runs
it on SQLite, ``test_ledger_postgres.py`` on a real PostgreSQL.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tests.test_ledger import spend
from tierwise.router.ledger.spend_ledger import SpendSink
from tierwise.router.ledger.sql import SampleQuery
from tierwise.router.ledger.sqlite_sink import SqliteSpendSink

DAY1_10H = 1709288100.0  # 2024-03-01T10:15:00Z
DAY1_11H = 1709291100.0  # 2024-03-01T11:05:00Z
DAY2_00H = 1709339400.0  # 2024-03-02T00:30:00Z
TINY = Decimal("0.000001234567")


def report_records() -> list:  # type: ignore[type-arg]
    records = [
        spend(
            1,
            ts=DAY1_10H,
            tags={"team": "search", "tier": "gold"},
            cost_usd=Decimal("0.1"),
            saved_usd=Decimal("0.05"),
        ),
        spend(
            2,
            ts=DAY1_11H,
            tags={"team": "search"},
            tier="large",
            cost_usd=Decimal("0.2"),
            fallback=True,
            attempts=2,
        ),
        spend(
            3, ts=DAY2_00H, tags={"team": "ads"}, cost_usd=TINY, status="UNAVAILABLE", error_type="timeout"
        ),
        spend(
            4,
            ts=DAY1_10H,
            tenant="globex",
            tags={},
            cost_usd=Decimal("0.7"),
            cache_result="exact",
            saved_usd=Decimal("0.3"),
        ),
    ]
    records += [spend(1000 + i, ts=DAY1_10H, tenant="bulk", tags={}, cost_usd=TINY) for i in range(1000)]
    return records


def _by(rows: list, *dims: str) -> dict:  # type: ignore[type-arg]
    return {tuple(row.group[d] for d in dims): row for row in rows}


def check_store(sink: SpendSink) -> None:
    records = report_records()
    assert sink.write(records) == len(records)
    assert sink.write(records[:10]) == 0  # request ids already stored are skipped
    assert sink.get("req-00004") == records[3]
    assert sink.get("nope") is None

    everything = sink.totals(0, 2e9)
    assert len(everything) == 1 and everything[0].requests == 1004
    assert everything[0].cost_usd == Decimal("1.0") + 1001 * TINY  # exact: floats would drift

    tenants = _by(sink.totals(0, 2e9, ["tenant"]), "tenant")
    acme = tenants[("acme",)]
    assert (acme.requests, acme.errors, acme.fallbacks, acme.cache_hits) == (3, 1, 1, 0)
    assert acme.cost_usd == Decimal("0.300001234567")
    assert acme.saved_usd == Decimal("0.05")
    assert acme.input_tokens == 101 + 102 + 103 and acme.output_tokens == 60
    assert tenants[("globex",)].cache_hits == 1 and tenants[("globex",)].saved_usd == Decimal("0.3")
    assert tenants[("bulk",)].cost_usd == Decimal("0.001234567")

    teams = _by(sink.totals(0, 2e9, ["team"]), "team")
    assert set(teams) == {("search",), ("ads",), ("",)}
    assert teams[("search",)].cost_usd == Decimal("0.3")
    assert teams[("",)].cost_usd == Decimal("0.7") + 1000 * TINY

    days = _by(sink.totals(0, 2e9, ["day", "tenant"], {"tenant": "acme"}), "day", "tenant")
    assert {k: v.cost_usd for k, v in days.items()} == {
        ("2024-03-01", "acme"): Decimal("0.3"),
        ("2024-03-02", "acme"): TINY,
    }
    hours = _by(sink.totals(0, 2e9, ["hour"], {"team": "search"}), "hour")
    assert sorted(hours) == [("2024-03-01T10:00Z",), ("2024-03-01T11:00Z",)]

    # A tag named like a column needs the tag: prefix.
    assert set(_by(sink.totals(0, 2e9, ["tag:tier"]), "tag:tier")) == {("gold",), ("",)}
    assert set(_by(sink.totals(0, 2e9, ["tier"]), "tier")) == {("small",), ("large",)}

    # [since, until): the end is excluded.
    window = sink.totals(DAY1_10H, DAY1_11H, ["tenant"], {"tenant": "acme"})
    assert [(r.requests, r.cost_usd) for r in window] == [(1, Decimal("0.1"))]
    assert sink.totals(0, 1) == []

    # Per-request samples: the columns asked for, each with its group, oldest first, money exact.
    samples = sink.samples(
        SampleQuery(0, 2e9, ["team"], {"tenant": "acme"}, ["request_id", "cost_usd", "fallback"])
    )
    assert [(s.group["team"], *s.values) for s in samples] == [
        ("search", "req-00001", Decimal("0.1"), False),
        ("search", "req-00002", Decimal("0.2"), True),
        ("ads", "req-00003", TINY, False),
    ]
    assert len(sink.samples(SampleQuery(0, 2e9, [], None, ["total_ms"]))) == 1004
    with pytest.raises(ValueError, match="sample columns"):
        sink.samples(SampleQuery(0, 2e9, [], None, ["tags"]))

    with pytest.raises(ValueError, match="tag keys"):
        sink.totals(0, 2e9, ['bad"key'])
    with pytest.raises(ValueError, match="once"):
        sink.totals(0, 2e9, ["tenant", "tenant"])

    assert sink.purge_older_than(0, now=DAY1_11H) == 1002  # everything before 11:00 on day 1
    assert sum(r.requests for r in sink.totals(0, 2e9, ["tenant"])) == 2


def test_sqlite_store(tmp_path: Path) -> None:
    sink = SqliteSpendSink(tmp_path / "spend.sqlite3")
    try:
        check_store(sink)
    finally:
        sink.close()


def test_sqlite_store_keeps_rows_across_reopening(tmp_path: Path) -> None:
    sink = SqliteSpendSink(tmp_path / "spend.sqlite3")
    sink.write([spend(1, cost_usd=TINY)])
    sink.close()
    reopened = SqliteSpendSink(tmp_path / "spend.sqlite3")
    assert reopened.get("req-00001") == spend(1, cost_usd=TINY)
    reopened.close()
