"""Durable quality signals for earlier requests (the learning loop reads them)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
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

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def _insert(self, f: FeedbackRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    f.feedback_id,
                    f.request_id,
                    f.tenant,
                    f.score,
                    f.source,
                    f.comment,
                    json.dumps(dict(f.metadata), sort_keys=True),
                    f.created_at,
                ),
            )

    async def record(self, feedback: FeedbackRecord) -> str:
        await asyncio.to_thread(self._insert, feedback)
        return feedback.feedback_id

    def _select(self, where: str, params: tuple[object, ...]) -> list[FeedbackRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT request_id, tenant, score, source, comment, metadata, created_at, feedback_id"
                f" FROM feedback WHERE {where} ORDER BY created_at, feedback_id",
                params,
            ).fetchall()
        return [
            FeedbackRecord(r[0], r[1], float(r[2]), r[3], r[4], json.loads(r[5]), float(r[6]), r[7])
            for r in rows
        ]

    async def for_request(self, tenant: str, request_id: str) -> list[FeedbackRecord]:
        return await asyncio.to_thread(self._select, "tenant = ? AND request_id = ?", (tenant, request_id))

    def select_between(self, since: float, until: float, source: str | None = None) -> list[FeedbackRecord]:
        if source is None:
            return self._select("created_at >= ? AND created_at < ?", (since, until))
        return self._select("created_at >= ? AND created_at < ? AND source = ?", (since, until, source))

    async def between(self, since: float, until: float, source: str | None = None) -> list[FeedbackRecord]:
        return await asyncio.to_thread(self.select_between, since, until, source)

    def _mean_scores(self, requests: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]:
        wanted = set(requests)
        by_id: dict[str, set[str]] = {}
        for tenant, request_id in wanted:
            by_id.setdefault(request_id, set()).add(tenant)
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
            for tenant, request_id, mean in rows:
                if tenant in by_id[request_id]:  # feedback counts only for the tenant that made the request
                    out[(tenant, request_id)] = float(mean)
        return out

    async def mean_scores(self, requests: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]:
        return await asyncio.to_thread(self._mean_scores, list(requests))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def aclose(self) -> None:
        self.close()
