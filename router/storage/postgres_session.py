"""One lazily opened psycopg connection shared by a store's threads, reopened after it breaks.

A database that is down at start-up only delays the first call; every
statement has a timeout so none hangs; the schema statements run once per
connection under an advisory lock so replicas creating tables at once take turns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")


class PostgresSession:
    def __init__(
        self,
        dsn: str,
        schema: Sequence[str],
        schema_lock: int,
        *,
        connect_timeout_s: int = 5,
        statement_timeout_s: float = 30.0,
    ) -> None:
        self._dsn = dsn
        self._schema = tuple(schema)
        self._schema_lock = schema_lock
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_ms = int(statement_timeout_s * 1000)
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        conn = psycopg.connect(
            self._dsn,
            autocommit=True,
            connect_timeout=self._connect_timeout_s,
            options=f"-c statement_timeout={self._statement_timeout_ms}",
        )
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._schema_lock,))
                for statement in self._schema:
                    conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``work`` in one transaction; a broken connection is dropped and reopened on the next call."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    return work(conn)
            except psycopg.OperationalError:
                conn.close()
                self._conn = None
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
