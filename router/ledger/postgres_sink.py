"""The shared spend store for many replicas: PostgreSQL via psycopg 3, money as NUMERIC.

The connection is opened on first use and reopened after it breaks, so a
database that is down at start-up only delays writes (the ledger keeps them in
its journal and retries); every call has a statement timeout so none hangs.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tierwise.router.ledger.record import SpendRecord
from tierwise.router.ledger.sql import ADDED_COLUMNS, Dialect, add_column_sql, insert_sql, schema, to_row
from tierwise.router.ledger.sql_store import SqlSpendStore
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


class PostgresSpendSink(SqlSpendStore):
    dialect = POSTGRES

    def __init__(self, dsn: str, *, connect_timeout_s: int = 5, statement_timeout_s: float = 30.0) -> None:
        self._session = PostgresSession(
            dsn,
            [*schema(POSTGRES), *(add_column_sql(POSTGRES, c, if_not_exists=True) for c in ADDED_COLUMNS)],
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

    def _fetch_all(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._run(lambda conn: conn.execute(query, params).fetchall())

    def _execute(self, query: str, params: Sequence[Any]) -> int:
        return self._run(lambda conn: conn.execute(query, params).rowcount)

    def close(self) -> None:
        self._session.close()
