"""Durable quality signals for earlier requests (the learning loop reads them)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
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
_MARKS = ", ".join("?" for _ in COLUMNS.split(","))


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


class SqlFeedbackTable(ABC):
    """What the SQLite and PostgreSQL tables share: the queries, retention and the async face.
    Subclasses run statements on their driver, whose parameter placeholder is ``mark``."""

    mark = "?"
    purge_every_s = 3600.0  # a write purges expired judgments at most this often

    def __init__(self, retention_s: float | None) -> None:
        self._retention_s = retention_s
        self._last_purge = float("-inf")

    @abstractmethod
    def _insert_new(self, rows: Sequence[Sequence[object]]) -> int:
        """Insert rows in one transaction, skipping feedback ids already stored; returns rows added."""

    @abstractmethod
    def _fetch(self, query: str, params: Sequence[object]) -> list[Sequence[object]]: ...

    @abstractmethod
    def _execute(self, query: str, params: Sequence[object]) -> int:
        """Run a statement; returns the rows it changed."""

    @abstractmethod
    def _mean_rows(self, request_ids: list[str]) -> list[Sequence[object]]:
        """(tenant, request_id, mean score) for every pair with feedback on these request ids."""

    @abstractmethod
    def close(self) -> None: ...

    def write_many(self, records: Sequence[FeedbackRecord]) -> int:
        added = self._insert_new([to_row(f) for f in records]) if records else 0
        now = time.time()
        if self._retention_s is not None and now - self._last_purge >= self.purge_every_s:
            self._last_purge = now
            self.purge_older_than(self._retention_s, now=now)
        return added

    def purge_older_than(self, seconds: float, *, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - seconds
        return self._execute(f"DELETE FROM feedback WHERE created_at < {self.mark}", (cutoff,))

    def _select(self, where: str, params: Sequence[object]) -> list[FeedbackRecord]:
        where = where.replace("?", self.mark)
        rows = self._fetch(f"{SELECT} WHERE {where} ORDER BY created_at, feedback_id", params)
        return [from_row(r) for r in rows]

    def select_between(self, since: float, until: float, source: str | None = None) -> list[FeedbackRecord]:
        if source is None:
            return self._select("created_at >= ? AND created_at < ?", (since, until))
        return self._select("created_at >= ? AND created_at < ? AND source = ?", (since, until, source))

    def _mean_scores(self, requests: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]:
        by_id: dict[str, set[str]] = {}
        for tenant, request_id in requests:
            by_id.setdefault(request_id, set()).add(tenant)
        out: dict[tuple[str, str], float] = {}
        for owner, asked, mean in self._mean_rows(sorted(by_id)) if by_id else []:
            if str(owner) in by_id.get(str(asked), set()):  # counts only for the tenant that made the request
                assert isinstance(mean, float | int)
                out[(str(owner), str(asked))] = float(mean)
        return out

    async def record(self, feedback: FeedbackRecord) -> str:
        await asyncio.to_thread(self.write_many, [feedback])
        return feedback.feedback_id

    async def for_request(self, tenant: str, request_id: str) -> list[FeedbackRecord]:
        return await asyncio.to_thread(self._select, "tenant = ? AND request_id = ?", (tenant, request_id))

    async def between(self, since: float, until: float, source: str | None = None) -> list[FeedbackRecord]:
        return await asyncio.to_thread(self.select_between, since, until, source)

    async def mean_scores(self, requests: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]:
        return await asyncio.to_thread(self._mean_scores, list(requests))

    async def aclose(self) -> None:
        self.close()


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


class SqliteFeedbackStore(SqlFeedbackTable):
    """Embedded store: one SQLite file, fsynced before a write is acknowledged."""

    def __init__(self, path: Path, *, retention_s: float | None = None) -> None:
        super().__init__(retention_s)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def _insert_new(self, rows: Sequence[Sequence[object]]) -> int:
        with self._lock:
            before = self._db.total_changes
            self._db.execute("BEGIN")
            try:
                self._db.executemany(f"INSERT OR IGNORE INTO feedback ({COLUMNS}) VALUES ({_MARKS})", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self._db.total_changes - before

    def _fetch(self, query: str, params: Sequence[object]) -> list[Sequence[object]]:
        with self._lock:
            return self._db.execute(query, params).fetchall()

    def _execute(self, query: str, params: Sequence[object]) -> int:
        with self._lock:
            return self._db.execute(query, params).rowcount

    def _mean_rows(self, request_ids: list[str]) -> list[Sequence[object]]:
        rows: list[Sequence[object]] = []
        for start in range(0, len(request_ids), _IN_CHUNK):
            chunk = request_ids[start : start + _IN_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            rows += self._fetch(
                f"SELECT tenant, request_id, AVG(score) FROM feedback WHERE request_id IN ({marks})"
                " GROUP BY tenant, request_id",
                chunk,
            )
        return rows

    def close(self) -> None:
        with self._lock:
            self._db.close()
