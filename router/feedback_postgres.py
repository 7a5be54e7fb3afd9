"""Judgments in PostgreSQL (shared mode with ``ledger.postgres_dsn``): the table mirrors the SQLite one.

The ``feedback`` table and its indexes are created if missing (replicas take
turns on an advisory lock). Writes skip feedback ids already stored, so a
judgment redelivered from the Redis stream lands once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from router.feedback import (
    COLUMNS,
    SELECT,
    FeedbackRecord,
    RetentionClock,
    from_row,
    own_tenant_means,
    tenants_by_request_id,
    to_row,
)
from router.postgres_session import PostgresSession

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


class PostgresFeedbackStore:
    def __init__(self, dsn: str, *, retention_s: float | None = None) -> None:
        self._session = PostgresSession(dsn, _SCHEMA, _SCHEMA_LOCK)
        self._run = self._session.run
        self._retention = RetentionClock(retention_s)

    def write_many(self, records: Sequence[FeedbackRecord]) -> int:
        rows = [tuple(_clean(v) for v in to_row(f)) for f in records]

        def insert(conn: psycopg.Connection[Any]) -> int:
            with conn.cursor() as cur:
                cur.executemany(_INSERT, rows)
                return max(cur.rowcount, 0)

        added = self._run(insert)
        retention = self._retention.due(time.time())
        if retention is not None:
            self.purge_older_than(retention)
        return added

    async def record(self, feedback: FeedbackRecord) -> str:
        await asyncio.to_thread(self.write_many, [feedback])
        return feedback.feedback_id

    def purge_older_than(self, seconds: float, *, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - seconds
        return self._run(
            lambda conn: conn.execute("DELETE FROM feedback WHERE created_at < %s", (cutoff,)).rowcount
        )

    def _select(self, where: str, params: tuple[object, ...]) -> list[FeedbackRecord]:
        query = f"{SELECT} WHERE {where} ORDER BY created_at, feedback_id"
        return [from_row(r) for r in self._run(lambda conn: conn.execute(query, params).fetchall())]

    async def for_request(self, tenant: str, request_id: str) -> list[FeedbackRecord]:
        return await asyncio.to_thread(self._select, "tenant = %s AND request_id = %s", (tenant, request_id))

    def select_between(self, since: float, until: float, source: str | None = None) -> list[FeedbackRecord]:
        if source is None:
            return self._select("created_at >= %s AND created_at < %s", (since, until))
        return self._select("created_at >= %s AND created_at < %s AND source = %s", (since, until, source))

    async def between(self, since: float, until: float, source: str | None = None) -> list[FeedbackRecord]:
        return await asyncio.to_thread(self.select_between, since, until, source)

    def _mean_scores(self, requests: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]:
        by_id = tenants_by_request_id(set(requests))
        query = (
            "SELECT tenant, request_id, AVG(score) FROM feedback WHERE request_id = ANY(%s)"
            " GROUP BY tenant, request_id"
        )
        rows = self._run(lambda conn: conn.execute(query, (sorted(by_id),)).fetchall())
        return own_tenant_means(rows, by_id)  # feedback counts only for the requesting tenant

    async def mean_scores(self, requests: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]:
        return await asyncio.to_thread(self._mean_scores, list(requests))

    def close(self) -> None:
        self._session.close()

    async def aclose(self) -> None:
        self.close()
