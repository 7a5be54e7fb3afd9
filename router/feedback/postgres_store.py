"""Judgments in PostgreSQL (shared mode with ``ledger.postgres_dsn``): the table mirrors the SQLite one.

The ``feedback`` table and its indexes are created if missing (replicas take
turns on an advisory lock). Writes skip feedback ids already stored, so a
judgment redelivered from the Redis stream lands once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from tierwise.router.feedback.store import COLUMNS, SqlFeedbackTable
from tierwise.router.storage.postgres_session import PostgresSession

_SCHEMA_LOCK = 0x7469657266656564  # any fixed number, distinct from the ledger's
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS feedback (
    feedback_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    source TEXT NOT NULL,
    comment TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS feedback_request ON feedback (tenant, request_id)",
    "CREATE INDEX IF NOT EXISTS feedback_time ON feedback (created_at)",
)
_INSERT = f"INSERT INTO feedback ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"


def _clean(value: object) -> object:
    # PostgreSQL text cannot hold NUL; a judgment must never become unstorable.
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


class PostgresFeedbackStore(SqlFeedbackTable):
    mark = "%s"

    def __init__(self, dsn: str, *, retention_s: float | None = None) -> None:
        super().__init__(retention_s)
        self._session = PostgresSession(dsn, _SCHEMA, _SCHEMA_LOCK)

    def _insert_new(self, rows: Sequence[Sequence[object]]) -> int:
        cleaned = [tuple(_clean(v) for v in row) for row in rows]

        def insert(conn: psycopg.Connection[Any]) -> int:
            with conn.cursor() as cur:
                cur.executemany(_INSERT, cleaned)
                return max(cur.rowcount, 0)

        return self._session.run(insert)

    def _fetch(self, query: str, params: Sequence[object]) -> list[Sequence[object]]:
        return self._session.run(lambda conn: list(conn.execute(query, params).fetchall()))

    def _execute(self, query: str, params: Sequence[object]) -> int:
        return self._session.run(lambda conn: conn.execute(query, params).rowcount)

    def _mean_rows(self, request_ids: list[str]) -> list[Sequence[object]]:
        return self._fetch(
            "SELECT tenant, request_id, AVG(score) FROM feedback WHERE request_id = ANY(%s)"
            " GROUP BY tenant, request_id",
            (request_ids,),
        )

    def close(self) -> None:
        self._session.close()
