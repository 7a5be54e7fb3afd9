"""Durable quality signals for earlier requests (the learning loop reads them)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

SOURCES = ("app", "human", "judge")
_IN_CHUNK = 500  # request ids per query: under SQLite's bound-parameter limit


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    request_id: str
    tenant: str
    score: float
    source: str
    comment: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    feedback_id: str = field(default_factory=lambda: uuid.uuid4().hex)


class FeedbackStore(Protocol):
    async def record(self, feedback: FeedbackRecord) -> str:
        """Store durably; returns the feedback id once it is on disk."""
        ...

    async def for_request(self, tenant: str, request_id: str) -> list[FeedbackRecord]: ...

    async def mean_scores(self, requests: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]:
        """The mean score per (tenant, request_id) that has any feedback; the others are left out."""
        ...

    async def between(self, since: float, until: float, source: str | None = None) -> list[FeedbackRecord]:
        """Feedback created in [since, until), oldest first (training reads judgments this way)."""
        ...

    async def aclose(self) -> None: ...


class FeedbackTable(FeedbackStore, Protocol):
    """A store that rows land in (SQLite or PostgreSQL): the shared mode's consumer writes through this."""

    def write_many(self, records: Sequence[FeedbackRecord]) -> int:
        """Insert, skipping feedback ids already stored (a redelivered judgment lands once); returns new rows."""
        ...

    def select_between(
        self, since: float, until: float, source: str | None = None
    ) -> list[FeedbackRecord]: ...

    def purge_older_than(self, seconds: float, *, now: float | None = None) -> int: ...

    def close(self) -> None: ...


COLUMNS = "feedback_id, request_id, tenant, score, source, comment, metadata, created_at"
SELECT = f"SELECT {COLUMNS} FROM feedback"


def to_row(f: FeedbackRecord) -> tuple[str, str, str, float, str, str, str, float]:
    metadata = json.dumps(dict(f.metadata), sort_keys=True)
    return (f.feedback_id, f.request_id, f.tenant, f.score, f.source, f.comment, metadata, f.created_at)


def from_row(r: Sequence[object]) -> FeedbackRecord:
    score, created_at = r[3], r[7]
    assert isinstance(score, float | int) and isinstance(created_at, float | int)
    return FeedbackRecord(
        request_id=str(r[1]),
        tenant=str(r[2]),
        score=float(score),
        source=str(r[4]),
        comment=str(r[5]),
        metadata=json.loads(str(r[6])),
        created_at=float(created_at),
        feedback_id=str(r[0]),
    )


def tenants_by_request_id(requests: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    by_id: dict[str, set[str]] = {}
    for tenant, request_id in requests:
        by_id.setdefault(request_id, set()).add(tenant)
    return by_id


def own_tenant_means(
    rows: Iterable[Sequence[object]], by_id: Mapping[str, set[str]]
) -> dict[tuple[str, str], float]:
    """(tenant, request_id, mean) rows -> scores, keeping only the tenant that made each request."""
    out: dict[tuple[str, str], float] = {}
    for tenant, request_id, mean in rows:
        if str(tenant) in by_id.get(str(request_id), set()):
            assert isinstance(mean, float | int)
            out[(str(tenant), str(request_id))] = float(mean)
    return out


class RetentionClock:
    """Decides when a write path should also purge old rows: at most once per interval, never if None."""

    def __init__(self, retention_s: float | None, every_s: float = 3600.0) -> None:
        self.retention_s = retention_s
        self._every_s = every_s
        self._last = float("-inf")

    def due(self, now: float) -> float | None:
        """The retention in seconds when a purge is due now, else None."""
        if self.retention_s is None or now - self._last < self._every_s:
            return None
        self._last = now
        return self.retention_s


_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    feedback_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    score REAL NOT NULL,
    source TEXT NOT NULL,
    comment TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (tenant, request_id);
CREATE INDEX IF NOT EXISTS feedback_time ON feedback (created_at);
"""


class SqliteFeedbackStore:
    """Embedded store: one SQLite file, fsynced before a write is acknowledged."""

    def __init__(self, path: Path, *, retention_s: float | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._retention = RetentionClock(retention_s)

    def write_many(self, records: Sequence[FeedbackRecord]) -> int:
        with self._lock:
            before = self._db.total_changes
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    f"INSERT OR IGNORE INTO feedback ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [to_row(f) for f in records],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            added = self._db.total_changes - before
        retention = self._retention.due(time.time())
        if retention is not None:
            self.purge_older_than(retention)
        return added

    async def record(self, feedback: FeedbackRecord) -> str:
        await asyncio.to_thread(self.write_many, [feedback])
        return feedback.feedback_id

    def purge_older_than(self, seconds: float, *, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - seconds
        with self._lock:
            return self._db.execute("DELETE FROM feedback WHERE created_at < ?", (cutoff,)).rowcount

    def _select(self, where: str, params: tuple[object, ...]) -> list[FeedbackRecord]:
        with self._lock:
            rows = self._db.execute(
                f"{SELECT} WHERE {where} ORDER BY created_at, feedback_id", params
            ).fetchall()
        return [from_row(r) for r in rows]

    async def for_request(self, tenant: str, request_id: str) -> list[FeedbackRecord]:
        return await asyncio.to_thread(self._select, "tenant = ? AND request_id = ?", (tenant, request_id))

    def select_between(self, since: float, until: float, source: str | None = None) -> list[FeedbackRecord]:
        if source is None:
            return self._select("created_at >= ? AND created_at < ?", (since, until))
        return self._select("created_at >= ? AND created_at < ? AND source = ?", (since, until, source))

    async def between(self, since: float, until: float, source: str | None = None) -> list[FeedbackRecord]:
        return await asyncio.to_thread(self.select_between, since, until, source)

    def _mean_scores(self, requests: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]:
        by_id = tenants_by_request_id(set(requests))
        ids = sorted(by_id)
        out: dict[tuple[str, str], float] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            with self._lock:
                rows = self._db.execute(
                    f"SELECT tenant, request_id, AVG(score) FROM feedback WHERE request_id IN ({marks})"
                    " GROUP BY tenant, request_id",
                    chunk,
                ).fetchall()
            out.update(own_tenant_means(rows, by_id))  # feedback counts only for the requesting tenant
        return out

    async def mean_scores(self, requests: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]:
        return await asyncio.to_thread(self._mean_scores, list(requests))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def aclose(self) -> None:
        self.close()
