"""``tierwise report``: group sums that equal the per-request records to the last digit, the
cache / routing savings split, latency percentiles, tag grouping, and the table, CSV and JSON
carrying the same numbers."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tests.harness import config_dict
from tests.test_ledger import spend
from tierwise.router.analytics.report import build_report
from tierwise.router.ledger.record import SpendRecord
from tierwise.router.ledger.reports import SinkReports
from tierwise.router.ledger.sqlite_sink import SqliteSpendSink
from tierwise.training.cli.app import app

T0 = 1709283600.0  # 2024-03-01T09:00:00Z
TENANTS = ("acme", "globex", "initech")
TEAMS = ("search", "ads", None)


def mixed_records(n: int = 300) -> list[SpendRecord]:
    """Varied traffic: three tenants, a team tag on two thirds, cache hits, errors, fallbacks."""
    rng = np.random.default_rng(7)
    records = []
    for i in range(n):
        team = TEAMS[i % 3]
        hit = i % 7 == 0
        failed = i % 11 == 0
        records.append(
            spend(
                i,
                ts=T0 + i * 600,  # every 10 minutes over ~2 days
                tenant=TENANTS[i % 5 % 3],
                feature=("chat", "search")[i % 2],
                tags={} if team is None else {"team": team, "project": f"p{i % 4}"},
                tier=("small", "large")[i % 3 == 1],
                cache_result="exact" if hit else "miss",
                cost_usd=Decimal(0) if hit else Decimal(int(rng.integers(1, 10**9))) / Decimal(10**12),
                saved_usd=Decimal(int(rng.integers(0, 10**8))) / Decimal(10**12),
                router_cost_usd=Decimal(int(rng.integers(0, 10**6))) / Decimal(10**12),
                total_ms=float(rng.uniform(5, 900)),
                ttft_ms=0.0 if failed else float(rng.uniform(1, 300)),
                status="UNAVAILABLE" if failed else "OK",
                fallback=i % 13 == 0,
            )
        )
    return records


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    sink = SqliteSpendSink(path / "spend.sqlite3")
    sink.write(mixed_records())
    sink.close()
    return path


def _exact(values: list[Decimal]) -> Decimal:
    total = Decimal(0)
    for v in values:
        total += v
    return total


@pytest.mark.asyncio
async def test_report_reconciles_with_the_records(store: Path) -> None:
    records = mixed_records()
    sink = SqliteSpendSink(store / "spend.sqlite3")
    try:
        report = await build_report(SinkReports(sink), 0, 2e9, ["tenant"])
    finally:
        sink.close()
    by_tenant: dict[str, list[SpendRecord]] = defaultdict(list)
    for r in records:
        by_tenant[r.tenant].append(r)
    assert [g.group["tenant"] for g in report.groups] == sorted(by_tenant)
    for group in report.groups:
        mine = by_tenant[group.group["tenant"]]
        hits = [r for r in mine if r.cache_result == "exact"]
        assert group.requests == len(mine)
        assert group.spend_usd == _exact([r.cost_usd for r in mine])
        assert group.cache_saved_usd == _exact([r.saved_usd for r in hits])
        assert group.routing_saved_usd == _exact([r.saved_usd for r in mine if r not in hits])
        assert group.net_saved_usd == _exact([r.saved_usd for r in mine]) - _exact(
            [r.router_cost_usd for r in mine]
        )
        assert group.input_tokens == sum(r.input_tokens for r in mine)
        assert group.error_rate == sum(not r.ok for r in mine) / len(mine)
        assert group.fallback_rate == sum(r.fallback for r in mine) / len(mine)
        assert group.cache_hit_rate == len(hits) / len(mine)
        want = np.percentile([r.total_ms for r in mine], [50, 95, 99])
        assert (group.latency_ms.p50, group.latency_ms.p95, group.latency_ms.p99) == pytest.approx(want)
        ttft = [r.ttft_ms for r in mine if r.ok]
        assert group.ttft_ms.p95 == pytest.approx(np.percentile(ttft, 95))
    assert report.total.spend_usd == _exact([r.cost_usd for r in records])
    assert report.total.spend_usd == _exact([g.spend_usd for g in report.groups])
    assert report.total.requests == len(records)


@pytest.mark.asyncio
async def test_grouping_by_tag_keys_and_time(store: Path) -> None:
    records = mixed_records()
    sink = SqliteSpendSink(store / "spend.sqlite3")
    try:
        reports = SinkReports(sink)
        teams = await build_report(reports, 0, 2e9, ["team", "tenant"], {"feature": "chat"})
        days = await build_report(reports, 0, 2e9, ["day"])
    finally:
        sink.close()
    want: dict[tuple[str, str], list[Decimal]] = defaultdict(list)
    for r in records:
        if r.feature == "chat":
            want[(r.tags.get("team", ""), r.tenant)].append(r.cost_usd)
    got = {(g.group["team"], g.group["tenant"]): g.spend_usd for g in teams.groups}
    assert got == {k: _exact(v) for k, v in want.items()}
    assert ("", "acme") in got  # requests without the tag form their own group
    assert [g.group["day"] for g in days.groups] == ["2024-03-01", "2024-03-02", "2024-03-03"]
    assert sum(g.requests for g in days.groups) == len(records)


def write_config(tmp_path: Path, store: Path) -> Path:
    data = config_dict(store, "http://127.0.0.1:9/v1", "http://127.0.0.1:9")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, ["report", *args], env={"COLUMNS": "600"})
    assert result.exit_code == 0, result.output
    return result.stdout


def march_window(config: Path, by: str) -> list[str]:
    """Report arguments for 1-4 March 2024 (the stored records' days), grouped ``by``."""
    return ["--config", str(config), "--since", "2024-03-01", "--until", "2024-03-04", "--by", by]


def table_rows(text: str) -> list[list[str]]:
    """The printed tables joined side by side: header, body rows and footer, as cells."""
    tables: list[list[list[str]]] = []
    for line in text.splitlines():
        if line.startswith("┏"):
            tables.append([])
        elif line.startswith(("│", "┃")):
            tables[-1].append([c.strip() for c in line.strip("│┃").replace("┃", "│").split("│")])
    dims = 2
    joined = tables[0]
    for table in tables[1:]:
        assert [row[:dims] for row in table] == [row[:dims] for row in joined]
        new = [i for i, name in enumerate(table[0]) if name not in joined[0]]
        joined = [a + [b[i] for i in new] for a, b in zip(joined, table, strict=True)]
    return joined


def test_table_csv_and_json_carry_the_same_numbers(tmp_path: Path, store: Path) -> None:
    config = write_config(tmp_path, store)
    window = march_window(config, "tenant,team")
    table = table_rows(invoke(*window))
    rows = list(csv.reader(io.StringIO(invoke(*window, "--format", "csv"))))
    data = json.loads(invoke(*window, "--format", "json"))

    header, body, footer = table[0], table[1:-1], table[-1]
    assert sorted(header) == sorted(rows[0])
    order = [header.index(name) for name in rows[0]]
    table = [[row[i] for i in order] for row in table]
    header, body, footer = table[0], table[1:-1], table[-1]
    assert header == rows[0]
    assert body == rows[1:-1]
    assert footer[2:] == rows[-1][2:] and rows[-1][:2] == ["*", "*"]
    as_json = [
        [g["group"]["tenant"], g["group"]["team"], *(g[c] for c in header[2:])] for g in data["groups"]
    ]
    for json_row, csv_row in zip(as_json, rows[1:-1], strict=True):
        assert [("" if v is None else str(v)) for v in json_row] == csv_row
    total = _exact([r.cost_usd for r in mixed_records()])
    assert Decimal(data["total"]["spend_usd"]) == total
    assert Decimal(rows[-1][header.index("spend_usd")]) == total


def test_report_cli_rejects_bad_input(tmp_path: Path, store: Path) -> None:
    config = write_config(tmp_path, store)
    for args, message in [
        (["--by", 'bad"key'], "--by"),
        (["--since", "yesterday-ish"], "--since"),
        (["--since", "1d", "--until", "2d"], "--until"),
        (["--format", "csv", "--quality"], "--format csv"),
    ]:
        result = CliRunner().invoke(app, ["report", "--config", str(config), *args])
        assert result.exit_code == 2, result.output
        assert message in result.output


def test_plot_writes_a_png(tmp_path: Path, store: Path) -> None:
    config = write_config(tmp_path, store)
    out = tmp_path / "spend.png"
    invoke(*march_window(config, "tenant"), "--plot", str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
