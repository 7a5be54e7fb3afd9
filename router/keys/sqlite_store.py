"""Stored keys in an embedded SQLite file (the default: ``keys.sqlite3`` under store.path).

Every replica on one host reads the same file; a write is one transaction that also bumps the
version, so a poll reads one row.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tierwise.router.keys.record import KeyConflict, KeyStoreUnavailable
from tierwise.router.keys.sql_store import Cursor, SqlKeyStore, schema
from tierwise.router.storage import in_transaction

T = TypeVar("T")


class SqliteKeyStore(SqlKeyStore):
    placeholder = "?"

    def __init__(self, path: Path, *, timeout_s: float = 2.0) -> None:
        self.name = f"sqlite {path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout_s)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.Lock()
        self._run(lambda cursor: [cursor.execute(s) for s in schema("REAL")])

    def _run(self, work: Callable[[Cursor], T]) -> T:
        try:
            return in_transaction(self._db, self._lock, work)
        except sqlite3.IntegrityError as exc:
            raise KeyConflict(str(exc)) from None
        except sqlite3.OperationalError as exc:  # locked past the timeout, disk gone
            raise KeyStoreUnavailable(f"key store {self.name}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
