"""The embedded traffic store: one SQLite file (WAL) under store.path.

Writes go through one connection, a batch per transaction. Reads open their
own connection, so a long read (a training run, in another process or not)
neither holds the writer's lock nor sees a half-written batch.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from tierwise.router.learning.traffic import TrafficSample
from tierwise.router.storage.sqlite_batch import insert_batch

_COLUMNS = tuple(f.name for f in fields(TrafficSample))
_READ_CHUNK = 1000

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS traffic (
        request_id TEXT PRIMARY KEY,
        ts REAL NOT NULL,
        tenant TEXT NOT NULL,
        feature TEXT NOT NULL,
        experiment TEXT NOT NULL,
        arm TEXT NOT NULL,
        tier TEXT NOT NULL,
        model TEXT NOT NULL,
        model_version TEXT NOT NULL,
        cache_result TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        turns INTEGER NOT NULL,
        embedding BLOB,
        statistics BLOB NOT NULL,
        feature_version TEXT NOT NULL,
        prompt TEXT,
        prompt_key TEXT NOT NULL DEFAULT ''
    )
    """,
    "CREATE INDEX IF NOT EXISTS traffic_time ON traffic (ts)",
    "CREATE INDEX IF NOT EXISTS traffic_tenant_time ON traffic (tenant, ts)",
)


# Columns added after the first release of the table: (name, definition) for ALTER TABLE.
_ADDED_COLUMNS = (("prompt_key", "TEXT NOT NULL DEFAULT ''"),)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a store written by an older tierwise up to this schema (its rows get the defaults)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(traffic)")}
    for name, definition in _ADDED_COLUMNS:
        if name not in present:
            db.execute(f"ALTER TABLE traffic ADD COLUMN {name} {definition}")


def _sample(row: Sequence[Any]) -> TrafficSample:
    return TrafficSample(**dict(zip(_COLUMNS, row, strict=True)))


class SqliteTrafficStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        for statement in _SCHEMA:
            self._db.execute(statement)
        _add_missing_columns(self._db)
        self._lock = threading.Lock()
        placeholders = ", ".join("?" for _ in _COLUMNS)
        self._insert = f"INSERT OR IGNORE INTO traffic ({', '.join(_COLUMNS)}) VALUES ({placeholders})"

    def write(self, samples: Sequence[TrafficSample]) -> int:
        rows = [tuple(getattr(s, c) for c in _COLUMNS) for s in samples]
        return insert_batch(self._db, self._lock, self._insert, rows)

    def _reader(self) -> sqlite3.Connection:
        reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        reader.execute("PRAGMA busy_timeout=5000")
        return reader

    def samples(self, since: float, until: float, tenant: str | None = None) -> Iterator[TrafficSample]:
        query = f"SELECT {', '.join(_COLUMNS)} FROM traffic WHERE ts >= ? AND ts < ?"
        params: list[Any] = [since, until]
        if tenant is not None:
            query += " AND tenant = ?"
            params.append(tenant)
        reader = self._reader()
        try:
            cursor = reader.execute(query + " ORDER BY ts, request_id", params)
            while rows := cursor.fetchmany(_READ_CHUNK):
                yield from (_sample(r) for r in rows)
        finally:
            reader.close()

    def get_many(self, request_ids: Sequence[str]) -> dict[str, TrafficSample]:
        found: dict[str, TrafficSample] = {}
        reader = self._reader()
        try:
            for start in range(0, len(request_ids), 500):  # under SQLite's bound-parameter limit
                chunk = list(request_ids[start : start + 500])
                marks = ", ".join("?" for _ in chunk)
                query = f"SELECT {', '.join(_COLUMNS)} FROM traffic WHERE request_id IN ({marks})"
                found.update((s.request_id, s) for s in map(_sample, reader.execute(query, chunk)))
        finally:
            reader.close()
        return found

    def purge_older_than(self, seconds: float, *, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - seconds
        with self._lock:
            return self._db.execute("DELETE FROM traffic WHERE ts < ?", (cutoff,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
