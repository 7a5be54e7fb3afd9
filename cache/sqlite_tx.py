"""One SQLite write transaction, for every embedded store of every layer (it lives in the lowest).

``BEGIN IMMEDIATE`` takes the write lock before the first read, so a check and the write that
follows it cannot interleave with another writer, and two writers never deadlock upgrading a read
lock. The connection must be in autocommit mode (``isolation_level=None``): the transaction is
explicit here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def write_transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """``work`` inside one transaction: committed when it returns, rolled back when it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result
