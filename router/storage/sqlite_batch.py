"""SQLite transactions the embedded stores share: one batch of rows at once, one write transaction."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tierwise.cache.sqlite_tx import write_transaction

T = TypeVar("T")


def insert_batch(
    db: sqlite3.Connection, lock: threading.Lock, sql: str, rows: Sequence[Sequence[Any]]
) -> int:
    """Run ``sql`` for every row inside one transaction (all rows or none); returns the rows changed.

    ``db`` must be in autocommit mode (``isolation_level=None``): the transaction is explicit here.
    """
    with lock:
        before = db.total_changes
        db.execute("BEGIN")
        try:
            db.executemany(sql, rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return db.total_changes - before


def in_transaction(
    db: sqlite3.Connection, lock: threading.Lock, body: Callable[[sqlite3.Connection], T]
) -> T:
    """``body`` in one write transaction (``cache.sqlite_tx``) on a connection that ``lock`` guards."""
    with lock:
        return write_transaction(db, body)
