"""The embedded spend store: one SQLite file (WAL), money as exact decimal text.

SQLite's own SUM would turn decimal text into floats, so reports sum money with
a registered aggregate that adds ``Decimal`` values. Each batch is one
transaction with ``synchronous=FULL``: once ``write`` returns, the rows survive
a power loss, which is what lets the ledger advance its journal past them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from tierwise.router.ledger.record import SpendRecord
from tierwise.router.ledger.sql import (
    ADDED_COLUMNS,
    TABLE,
    Dialect,
    add_column_sql,
    insert_sql,
    schema,
    tags_json,
    to_row,
)
from tierwise.router.ledger.sql_store import SqlSpendStore
from tierwise.router.pricing import total_usd, usd_str
from tierwise.router.storage.sqlite_batch import insert_batch


class _DecimalSum:
    """SQLite aggregate: the exact sum of decimal text, returned as text."""

    def __init__(self) -> None:
        self._total = Decimal(0)

    # Typed Any: the sqlite3 stubs describe aggregates over integers only.
    def step(self, value: Any) -> None:
        if value is not None:
            self._total = total_usd((self._total, Decimal(value)))

    def finalize(self) -> Any:
        return usd_str(self._total)


_TIME_FORMATS = {"day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H:00Z"}

SQLITE = Dialect(
    types={
        "text": "TEXT",
        "real": "REAL",
        "int": "INTEGER",
        "money": "TEXT",
        "json": "TEXT",
        "bool": "INTEGER",
    },
    placeholder="?",
    money_sum="decimal_sum",
    time_bucket=lambda bucket: f"strftime('{_TIME_FORMATS[bucket]}', ts, 'unixepoch')",
    tag_value="json_extract(tags, ?)",
    tag_param=lambda key: f'$."{key}"',
    to_db={"money": usd_str, "json": tags_json, "bool": int},
    from_db={"money": Decimal, "json": json.loads, "bool": bool},
)


class SqliteSpendSink(SqlSpendStore):
    dialect = SQLITE

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.create_aggregate("decimal_sum", 1, _DecimalSum)
        for statement in schema(SQLITE):
            self._db.execute(statement)
        present = {row[1] for row in self._db.execute(f"PRAGMA table_info({TABLE})")}
        for column in ADDED_COLUMNS.keys() - present:  # a table an older release made
            self._db.execute(add_column_sql(SQLITE, column, if_not_exists=False))
        self._lock = threading.Lock()
        self._insert = insert_sql(SQLITE)

    def write(self, records: Sequence[SpendRecord]) -> int:
        return insert_batch(self._db, self._lock, self._insert, [to_row(SQLITE, r) for r in records])

    def _fetch_all(self, query: str, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            return self._db.execute(query, params).fetchall()

    def _execute(self, query: str, params: Sequence[Any]) -> int:
        with self._lock:
            return self._db.execute(query, params).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
