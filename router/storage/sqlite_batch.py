"""One batch of rows into SQLite as one transaction, shared by the embedded stores that write in batches."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from typing import Any


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
