"""Stored keys in PostgreSQL, shared by every replica (store.kind redis with ledger.postgres_dsn)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from tierwise.router.keys.record import KeyConflict, KeyStoreUnavailable
from tierwise.router.keys.sql_store import Cursor, SqlKeyStore, schema
from tierwise.router.storage import PostgresSession

T = TypeVar("T")
_SCHEMA_LOCK = 0x7477_6B65  # "twke": replicas creating the tables at once take turns


class PostgresKeyStore(SqlKeyStore):
    name = "postgresql"
    placeholder = "%s"

    def __init__(self, dsn: str, *, timeout_s: float = 2.0) -> None:
        self._session = PostgresSession(
            dsn,
            schema("DOUBLE PRECISION"),
            _SCHEMA_LOCK,
            connect_timeout_s=max(1, round(timeout_s)),
            statement_timeout_s=timeout_s,
        )

    def _run(self, work: Callable[[Cursor], T]) -> T:
        def in_transaction(conn: psycopg.Connection[Any]) -> T:
            return work(conn)

        try:
            return self._session.run(in_transaction)
        except psycopg.errors.UniqueViolation as exc:
            raise KeyConflict(str(exc)) from None
        except psycopg.OperationalError as exc:  # down, unreachable, statement timeout
            raise KeyStoreUnavailable(f"key store {self.name}: {exc}") from None

    def close(self) -> None:
        self._session.close()
