"""One report, three formats: a rich table for the terminal, CSV (the chargeback export) and JSON.

Every format is drawn from ``row_values``, which rounds each number once: the
table, the CSV and the JSON carry the same numbers. Money stays exact (the
store's Decimal sums, as text), so the CSV reconciles with the ledger to the cent.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from rich.console import RenderableType
from rich.table import Table

from tierwise.router.analytics.report import GroupReport, Percentiles, Report
from tierwise.router.pricing import usd_str

Value = int | float | Decimal | None


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _share(value: float) -> float:
    return round(value, 4)


def _percentiles(name: str, get: Callable[[GroupReport], Percentiles]) -> list[tuple[str, Any]]:
    return [
        (f"{name}_p50_ms", lambda g: _ms(get(g).p50)),
        (f"{name}_p95_ms", lambda g: _ms(get(g).p95)),
        (f"{name}_p99_ms", lambda g: _ms(get(g).p99)),
    ]


# (column, value of a group); the order is the order of every format.
METRICS: tuple[tuple[str, Callable[[GroupReport], Value]], ...] = (
    ("requests", lambda g: g.requests),
    ("input_tokens", lambda g: g.input_tokens),
    ("output_tokens", lambda g: g.output_tokens),
    ("cached_input_tokens", lambda g: g.cached_input_tokens),
    ("spend_usd", lambda g: g.spend_usd),
    ("cache_saved_usd", lambda g: g.cache_saved_usd),
    ("routing_saved_usd", lambda g: g.routing_saved_usd),
    ("router_cost_usd", lambda g: g.router_cost_usd),
    ("net_saved_usd", lambda g: g.net_saved_usd),
    ("error_rate", lambda g: _share(g.error_rate)),
    ("fallback_rate", lambda g: _share(g.fallback_rate)),
    ("unfamiliar_share", lambda g: _share(g.unfamiliar_share)),
    ("cache_hit_rate", lambda g: _share(g.cache_hit_rate)),
    *_percentiles("latency", lambda g: g.latency_ms),
    *_percentiles("ttft", lambda g: g.ttft_ms),
)
METRIC_NAMES = tuple(name for name, _ in METRICS)


def row_values(group: GroupReport) -> dict[str, Value]:
    return {name: get(group) for name, get in METRICS}


def cell(value: object) -> str:
    """A value as the table and the CSV print it (money exact, empty when unknown)."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return usd_str(value)
    return str(value)


def _json_value(value: object) -> object:
    return usd_str(value) if isinstance(value, Decimal) else value


def _time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Section:
    """A further section of a report (cost per quality, forecast ...): its table and its JSON."""

    key: str
    table: RenderableType  # a rich table, or a group of them
    data: object


# The terminal splits the columns in two tables so each fits a screen: money, then service.
_TABLE_PARTS = (
    ("spend", METRIC_NAMES[: METRIC_NAMES.index("net_saved_usd") + 1]),
    ("service", ("requests", *METRIC_NAMES[METRIC_NAMES.index("error_rate") :])),
)


def groups_tables(report: Report) -> list[Table]:
    """The report for the terminal; no number is cut short (a cell too wide wraps)."""
    window = f"{_time(report.since)} .. {_time(report.until)}"
    rows = report.groups if report.by else (report.total,)
    values = [row_values(g) for g in rows]
    total = row_values(report.total)
    tables = []
    for part, names in _TABLE_PARTS:
        table = Table(title=f"{part} {window}", show_footer=bool(report.by))
        for d in report.by:
            table.add_column(d, footer="total" if d == report.by[0] else "", overflow="fold")
        for name in names:
            footer = cell(total[name]) if report.by else ""
            table.add_column(name, justify="right", footer=footer, overflow="fold")
        for group, v in zip(rows, values, strict=True):
            table.add_row(*(group.group[d] for d in report.by), *(cell(v[name]) for name in names))
        tables.append(table)
    return tables


def groups_csv(report: Report) -> str:
    """One row per group, then a last row whose dimension columns are ``*``: the total."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*report.by, *METRIC_NAMES])
    for group in (*report.groups, report.total) if report.by else (report.total,):
        writer.writerow(
            [*(group.group[d] for d in report.by), *(cell(v) for v in row_values(group).values())]
        )
    return out.getvalue()


def _group_json(group: GroupReport) -> dict[str, object]:
    return {"group": dict(group.group), **{k: _json_value(v) for k, v in row_values(group).items()}}


def report_json(report: Report, sections: Sequence[Section] = ()) -> str:
    data: dict[str, object] = {
        "since": _time(report.since),
        "until": _time(report.until),
        "by": list(report.by),
        "filters": dict(report.filters),
        "groups": [_group_json(g) for g in report.groups] if report.by else [],
        "total": _group_json(report.total),
    }
    for section in sections:
        data[section.key] = section.data
    return json.dumps(data, indent=2, default=_json_value)


def jsonable(values: Mapping[str, object]) -> dict[str, object]:
    return {k: _json_value(v) for k, v in values.items()}
