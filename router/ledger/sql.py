"""The spend table and its report query, once, for every SQL store.

Each store supplies a ``Dialect`` (column types, placeholders, how to sum money
exactly, how to bucket time and read a tag); the table layout, the grouping
rules and the row conversions live here so the stores cannot drift apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from operator import attrgetter
from typing import Any, Literal

from tierwise.router.ledger.record import FIELD_NAMES, SpendRecord

TABLE = "tierwise_spend"

# Column kinds; each dialect maps them to its own types.
Kind = Literal["text", "real", "int", "money", "json", "bool"]
COLUMNS: tuple[tuple[str, Kind], ...] = (
    ("request_id", "text"),
    ("ts", "real"),
    ("tenant", "text"),
    ("feature", "text"),
    ("tags", "json"),
    ("user_hash", "text"),
    ("experiment", "text"),
    ("arm", "text"),
    ("tier", "text"),
    ("model", "text"),
    ("provider", "text"),
    ("cache_result", "text"),
    ("input_tokens", "int"),
    ("output_tokens", "int"),
    ("cached_input_tokens", "int"),
    ("cost_usd", "money"),
    ("saved_usd", "money"),
    ("router_cost_usd", "money"),
    ("total_ms", "real"),
    ("upstream_ms", "real"),
    ("overhead_ms", "real"),
    ("ttft_ms", "real"),
    ("status", "text"),
    ("error_type", "text"),
    ("attempts", "int"),
    ("fallback", "bool"),
    ("reason", "text"),
    ("api_key", "text"),
)
# Columns added after the first release, with the value older rows get: a store opened on an
# older table adds them (``add_column_sql``), so old databases keep working.
ADDED_COLUMNS = {"api_key": "''"}
assert tuple(name for name, _ in COLUMNS) == FIELD_NAMES, "the table must hold every SpendRecord field"

INDEXES = {"tenant_ts": "tenant, ts", "feature_ts": "feature, ts", "ts": "ts"}

# Report dimensions that are plain columns, and the time buckets (UTC).
GROUP_COLUMNS = (
    "tenant",
    "feature",
    "tier",
    "model",
    "provider",
    "experiment",
    "arm",
    "status",
    "cache_result",
    "api_key",
)
ALIASES = {"key": "api_key"}  # report --by key
TIME_BUCKETS = ("day", "hour")
_TAG_KEY = re.compile(r'^[^"\\\x00]{1,256}$')


@dataclass(frozen=True, slots=True)
class SpendTotals:
    """One group of a report; ``group`` maps each requested dimension to its value ("" when absent)."""

    group: Mapping[str, str]
    requests: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cost_usd: Decimal
    saved_usd: Decimal
    router_cost_usd: Decimal
    errors: int
    fallbacks: int
    cache_hits: int


@dataclass(frozen=True, slots=True)
class Dimension:
    name: str  # as the caller asked for it
    kind: Literal["column", "time", "tag"]
    key: str  # column name, bucket name or tag key


def parse_dimension(name: str) -> Dimension:
    """A column (tenant, feature, tier, model, ...), a time bucket (day, hour), or a tag key.

    Any other name is a tag key; ``tag:NAME`` names a tag even when it shares a
    column's name.
    """
    if name.startswith("tag:"):
        key = name[4:]
    elif name in GROUP_COLUMNS or name in ALIASES:
        return Dimension(name, "column", ALIASES.get(name, name))
    elif name in TIME_BUCKETS:
        return Dimension(name, "time", name)
    else:
        key = name
    if not _TAG_KEY.match(key):
        raise ValueError(
            f"cannot group by {name!r}: tag keys are 1-256 characters without quotes or backslashes"
        )
    return Dimension(name, "tag", key)


@dataclass(frozen=True, slots=True)
class Dialect:
    types: Mapping[Kind, str]
    placeholder: str  # "?" or "%s"
    money_sum: str  # an aggregate that sums the money column exactly: "SUM" or a registered one
    time_bucket: Callable[[str], str]  # "day" | "hour" -> SQL expression over ts, UTC
    tag_value: str  # SQL over the tags column taking the tag key as a parameter
    tag_param: Callable[[str], str]  # the tag key -> that parameter's value
    # Per column kind, when the driver needs it: a record field's value -> what it stores, and back.
    to_db: Mapping[Kind, Callable[[Any], Any]]
    from_db: Mapping[Kind, Callable[[Any], Any]]


def schema(d: Dialect) -> list[str]:
    columns = ",\n".join(
        f"    {name} {d.types[kind]} NOT NULL" + (" PRIMARY KEY" if name == "request_id" else "")
        for name, kind in COLUMNS
    )
    statements = [f"CREATE TABLE IF NOT EXISTS {TABLE} (\n{columns}\n)"]
    statements += [
        f"CREATE INDEX IF NOT EXISTS {TABLE}_{n} ON {TABLE} ({cols})" for n, cols in INDEXES.items()
    ]
    return statements


def add_column_sql(d: Dialect, name: str, *, if_not_exists: bool) -> str:
    """Adds one of ``ADDED_COLUMNS`` to an older table (PostgreSQL can say IF NOT EXISTS; SQLite
    cannot, so its store asks which columns exist first)."""
    kind = dict(COLUMNS)[name]
    guard = "IF NOT EXISTS " if if_not_exists else ""
    return (
        f"ALTER TABLE {TABLE} ADD COLUMN {guard}{name} {d.types[kind]} NOT NULL DEFAULT {ADDED_COLUMNS[name]}"
    )


def insert_sql(d: Dialect) -> str:
    names = ", ".join(name for name, _ in COLUMNS)
    marks = ", ".join(d.placeholder for _ in COLUMNS)
    return f"INSERT INTO {TABLE} ({names}) VALUES ({marks}) ON CONFLICT (request_id) DO NOTHING"


def select_one_sql(d: Dialect) -> str:
    names = ", ".join(name for name, _ in COLUMNS)
    return f"SELECT {names} FROM {TABLE} WHERE request_id = {d.placeholder}"


def purge_sql(d: Dialect) -> str:
    return f"DELETE FROM {TABLE} WHERE ts < {d.placeholder}"


_field_values = attrgetter(*FIELD_NAMES)


def to_row(d: Dialect, record: SpendRecord) -> list[Any]:
    # Runs for every stored record: convert only the columns the driver needs converted.
    row = list(_field_values(record))
    for i, (_, kind) in enumerate(COLUMNS):
        convert = d.to_db.get(kind)
        if convert is not None:
            row[i] = convert(row[i])
    return row


def from_row(d: Dialect, row: Sequence[Any]) -> SpendRecord:
    values = {}
    for (name, kind), value in zip(COLUMNS, row, strict=True):
        convert = d.from_db.get(kind)
        values[name] = value if convert is None else convert(value)
    return SpendRecord(**values)


def _dimension_sql(d: Dialect, dim: Dimension) -> tuple[str, list[Any]]:
    if dim.kind == "column":
        return dim.key, []
    if dim.kind == "time":
        return d.time_bucket(dim.key), []
    return d.tag_value, [d.tag_param(dim.key)]


def _grouped(
    d: Dialect, since: float, until: float, by: Sequence[str], filters: Mapping[str, str]
) -> tuple[list[Dimension], list[str], list[Any], str, list[Any]]:
    """The parts every report query shares: the group expressions and the WHERE clause, with params."""
    if len(set(by)) != len(by):
        raise ValueError(f"group by each dimension once, got {list(by)}")
    dims = [parse_dimension(name) for name in by]
    selects: list[str] = []
    select_params: list[Any] = []
    for dim in dims:
        sql, dim_params = _dimension_sql(d, dim)
        selects.append(f"COALESCE({sql}, '')")
        select_params += dim_params
    p = d.placeholder
    where = [f"ts >= {p}", f"ts < {p}"]
    where_params: list[Any] = [since, until]
    for name, value in filters.items():
        sql, dim_params = _dimension_sql(d, parse_dimension(name))
        where.append(f"COALESCE({sql}, '') = {p}")
        where_params += [*dim_params, value]
    return dims, selects, select_params, " AND ".join(where), where_params


def totals_sql(
    d: Dialect, since: float, until: float, by: Sequence[str], filters: Mapping[str, str]
) -> tuple[list[Dimension], str, list[Any]]:
    """The report query: requests in [since, until) grouped by ``by``, where each filter matches."""
    dims, selects, params, where, where_params = _grouped(d, since, until, by, filters)
    m = d.money_sum
    selects += [
        "COUNT(*)",
        "SUM(input_tokens)",
        "SUM(output_tokens)",
        "SUM(cached_input_tokens)",
        f"{m}(cost_usd)",
        f"{m}(saved_usd)",
        f"{m}(router_cost_usd)",
        "SUM(CASE WHEN status <> 'OK' THEN 1 ELSE 0 END)",
        "SUM(CASE WHEN fallback THEN 1 ELSE 0 END)",
        "SUM(CASE WHEN cache_result IN ('exact', 'semantic') THEN 1 ELSE 0 END)",
    ]
    query = f"SELECT {', '.join(selects)} FROM {TABLE} WHERE {where}"
    if dims:
        ordinals = ", ".join(str(i + 1) for i in range(len(dims)))
        query += f" GROUP BY {ordinals} ORDER BY {ordinals}"
    return dims, query, params + where_params


# Columns a per-request sample may carry: anything but the tags (group by a tag key instead).
SAMPLE_COLUMNS = {name: kind for name, kind in COLUMNS if kind != "json"}


@dataclass(frozen=True, slots=True)
class Sample:
    """One request's chosen columns, with its group (as in ``SpendTotals.group``)."""

    group: Mapping[str, str]
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class SampleQuery:
    """Which requests' values to read: [since, until), grouped by ``by`` (as ``totals`` groups),
    those matching ``filters``, and which ``columns`` of each (some of ``SAMPLE_COLUMNS``)."""

    since: float
    until: float
    by: Sequence[str]
    filters: Mapping[str, str] | None
    columns: Sequence[str]


def samples_sql(d: Dialect, q: SampleQuery) -> tuple[list[Dimension], str, list[Any]]:
    """Per-request values with each request's group: what SQL cannot sum portably (latency
    percentiles, joins with the feedback store) is computed from these."""
    unknown = [c for c in q.columns if c not in SAMPLE_COLUMNS]
    if unknown or not q.columns:
        raise ValueError(f"sample columns must be some of {sorted(SAMPLE_COLUMNS)}, got {list(q.columns)}")
    dims, selects, params, where, where_params = _grouped(d, q.since, q.until, q.by, q.filters or {})
    query = f"SELECT {', '.join([*selects, *q.columns])} FROM {TABLE} WHERE {where} ORDER BY ts"
    return dims, query, params + where_params


def samples_from_rows(
    d: Dialect, dims: Sequence[Dimension], columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> list[Sample]:
    n = len(dims)
    converts = [d.from_db.get(SAMPLE_COLUMNS[c]) for c in columns]
    out = []
    for row in rows:
        values = tuple(v if f is None else f(v) for f, v in zip(converts, row[n:], strict=True))
        out.append(Sample({dim.name: str(v) for dim, v in zip(dims, row[:n], strict=True)}, values))
    return out


def totals_from_rows(dims: Sequence[Dimension], rows: Sequence[Sequence[Any]]) -> list[SpendTotals]:
    out = []
    for row in rows:
        n = len(dims)
        requests = int(row[n])
        if requests == 0:  # an ungrouped query over no rows still returns one row
            continue
        ints = [int(v or 0) for v in (row[n + 1], row[n + 2], row[n + 3], row[n + 7], row[n + 8], row[n + 9])]
        money = [Decimal(v or 0) for v in (row[n + 4], row[n + 5], row[n + 6])]
        out.append(
            SpendTotals(
                group={dim.name: str(value) for dim, value in zip(dims, row[:n], strict=True)},
                requests=requests,
                input_tokens=ints[0],
                output_tokens=ints[1],
                cached_input_tokens=ints[2],
                cost_usd=money[0],
                saved_usd=money[1],
                router_cost_usd=money[2],
                errors=ints[3],
                fallbacks=ints[4],
                cache_hits=ints[5],
            )
        )
    return out


def tags_json(tags: Mapping[str, str]) -> str:
    return json.dumps(dict(tags), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
