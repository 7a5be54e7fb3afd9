"""The shared spend store for many replicas: PostgreSQL via psycopg 3, money as NUMERIC.

The connection is opened on first use and reopened after it breaks, so a
database that is down at start-up only delays writes (the ledger keeps them in
its journal and retries); every call has a statement timeout so none hangs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tierwise.router.ledger.record import SpendRecord
from tierwise.router.ledger.sql import (
    Dialect,
    Sample,
    SpendTotals,
    from_row,
    insert_sql,
    purge_sql,
    samples_from_rows,
    samples_sql,
    schema,
    select_one_sql,
    to_row,
    totals_from_rows,
    totals_sql,
)
from tierwise.router.storage.postgres_session import PostgresSession

# Any fixed number: replicas creating the table at once take turns on it.
_SCHEMA_LOCK = 0x7469657277697365


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; a record must never become unstorable.
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _jsonb(tags: dict[str, str]) -> Jsonb:
    return Jsonb({_clean(k): _clean(v) for k, v in tags.items()})


_TIME_FORMATS = {"day": "YYYY-MM-DD", "hour": 'YYYY-MM-DD"T"HH24":00Z"'}

POSTGRES = Dialect(
    types={
        "text": "TEXT",
        "real": "DOUBLE PRECISION",
        "int": "BIGINT",
        "money": "NUMERIC",
        "json": "JSONB",
        "bool": "BOOLEAN",
    },
    placeholder="%s",
    money_sum="SUM",
    time_bucket=lambda bucket: f"to_char(to_timestamp(ts) AT TIME ZONE 'UTC', '{_TIME_FORMATS[bucket]}')",
    tag_value="(tags ->> %s)",
    tag_param=lambda key: key,
    to_db={"text": _clean, "json": _jsonb},
    from_db={"money": Decimal},
)


class PostgresSpendSink:
    def __init__(self, dsn: str, *, connect_timeout_s: int = 5, statement_timeout_s: float = 30.0) -> None:
        self._session = PostgresSession(
            dsn,
            schema(POSTGRES),
            _SCHEMA_LOCK,
            connect_timeout_s=connect_timeout_s,
            statement_timeout_s=statement_timeout_s,
        )
        self._run = self._session.run
        self._insert = insert_sql(POSTGRES)

    def write(self, records: Sequence[SpendRecord]) -> int:
        rows = [to_row(POSTGRES, r) for r in records]

        def insert(conn: psycopg.Connection[Any]) -> int:
            with conn.cursor() as cur:
                cur.executemany(self._insert, rows)
                return max(cur.rowcount, 0)

        return self._run(insert)

    def get(self, request_id: str) -> SpendRecord | None:
        def select(conn: psycopg.Connection[Any]) -> SpendRecord | None:
            row = conn.execute(select_one_sql(POSTGRES), (request_id,)).fetchone()
            return None if row is None else from_row(POSTGRES, row)

        return self._run(select)

    def totals(
        self, since: float, until: float, by: Sequence[str] = (), filters: Mapping[str, str] | None = None
    ) -> list[SpendTotals]:
        dims, query, params = totals_sql(POSTGRES, since, until, by, filters or {})
        rows = self._run(lambda conn: conn.execute(query, params).fetchall())
        return totals_from_rows(dims, rows)

    def samples(
        self,
        since: float,
        until: float,
        by: Sequence[str],
        filters: Mapping[str, str] | None,
        columns: Sequence[str],
    ) -> list[Sample]:
        dims, query, params = samples_sql(POSTGRES, since, until, by, filters or {}, columns)
        rows = self._run(lambda conn: conn.execute(query, params).fetchall())
        return samples_from_rows(POSTGRES, dims, columns, rows)

    def purge_older_than(self, seconds: float, *, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - seconds
        return self._run(lambda conn: conn.execute(purge_sql(POSTGRES), (cutoff,)).rowcount)

    def close(self) -> None:
        self._session.close()
