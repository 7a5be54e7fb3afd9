"""The embedded entry store: one SQLite file in WAL mode.

``synchronous=FULL`` makes every acknowledged write durable before ``insert``
returns, so an entry survives kill -9 and power loss. All SQLite calls run in
worker threads: writes on one thread (SQLite has one writer anyway), reads on a
small pool of read-only connections, which WAL lets proceed beside the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from tierwise.cache.entry_columns import decode_vector, entry_columns
from tierwise.cache.entry_state import EntryUsage, EvictionOrder, EvictionPlan, FeedbackState
from tierwise.cache.errors import CacheStoreError
from tierwise.cache.sqlite_tx import write_transaction
from tierwise.cache.store import CachedResponse, CacheEntry, EntryFilter, EntryRef, StoreIdentity, VectorRow

T = TypeVar("T")

SCHEMA_VERSION = 1
_IN_CHUNK = 500  # host parameters per IN (...) list, well under SQLite's limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    entry_id TEXT PRIMARY KEY,
    partition_key TEXT NOT NULL,
    tenant TEXT NOT NULL,
    namespace TEXT NOT NULL,
    exact_key TEXT NOT NULL UNIQUE,
    query_text TEXT NOT NULL,
    embedder_key TEXT NOT NULL,
    dim INTEGER NOT NULL,
    embedding BLOB NOT NULL,
    content TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    last_hit_at REAL,
    last_used_at REAL NOT NULL,
    threshold_adjust REAL NOT NULL DEFAULT 0,
    negative_feedback INTEGER NOT NULL DEFAULT 0,
    saved REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_partition ON entries (partition_key);
CREATE INDEX IF NOT EXISTS entries_tenant ON entries (tenant);
CREATE INDEX IF NOT EXISTS entries_created ON entries (created_at);
CREATE INDEX IF NOT EXISTS entries_expires ON entries (expires_at);
CREATE INDEX IF NOT EXISTS entries_last_used ON entries (last_used_at);
CREATE INDEX IF NOT EXISTS entries_embedder ON entries (embedder_key, entry_id);
"""

_ENTRY_COLUMNS = (
    "entry_id, partition_key, tenant, namespace, exact_key, query_text, embedder_key, dim, embedding, "
    "content, finish_reason, model, input_tokens, output_tokens, created_at, expires_at, hits, "
    "last_hit_at, threshold_adjust, negative_feedback, saved"
)
_REF_COLUMNS = "entry_id, partition_key, embedder_key"


def _entry_from_row(row: sqlite3.Row) -> CacheEntry:
    return CacheEntry(
        entry_id=row["entry_id"],
        partition_key=row["partition_key"],
        tenant=row["tenant"],
        namespace=row["namespace"],
        exact_key=row["exact_key"],
        query_text=row["query_text"],
        embedder_key=row["embedder_key"],
        embedding=decode_vector(row["embedding"], row["dim"]),
        response=CachedResponse(
            content=row["content"],
            finish_reason=row["finish_reason"],
            model=row["model"],
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
        ),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        hits=row["hits"],
        last_hit_at=row["last_hit_at"],
        threshold_adjust=row["threshold_adjust"],
        negative_feedback=row["negative_feedback"],
        saved=row["saved"],
    )


def _refs(rows: list[sqlite3.Row]) -> list[EntryRef]:
    return [EntryRef(row["entry_id"], row["partition_key"], row["embedder_key"]) for row in rows]


def _where(where: EntryFilter) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    for clause, value in (
        ("entry_id = ?", where.entry_id),
        ("tenant = ?", where.tenant),
        ("partition_key = ?", where.partition_key),
        ("created_at < ?", where.created_before),
        ("expires_at <= ?", where.expires_before),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return " AND ".join(clauses), params


def _bump_generation(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")


class SqliteEntryStore:
    """:class:`tierwise.cache.store.EntryStore` over one SQLite file; create it with :meth:`open`."""

    def __init__(self, path: Path, readers: int = 2) -> None:
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tierwise-sqlite-write")
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="tierwise-sqlite-read")
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path, readers: int = 2) -> SqliteEntryStore:
        store = cls(Path(path), readers)
        try:
            await store._write(store._create_schema)
        except BaseException:
            await store.aclose()
            raise
        return store

    # -- plumbing ---------------------------------------------------------------------------------

    def _connection(self, readonly: bool) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # Each connection is used only by the thread that made it; aclose() closes them all.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
            if readonly:
                conn.execute("PRAGMA query_only = ON")
            else:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _in_transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return write_transaction(self._connection(readonly=False), work)

    def _query(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return work(self._connection(readonly=True))

    async def _run(self, executor: ThreadPoolExecutor, call: Callable[[], T]) -> T:
        if self._closed:
            raise CacheStoreError(f"the cache store {self.path} is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, call)
        except sqlite3.Error as exc:
            raise CacheStoreError(f"cache store {self.path}: {exc}") from exc

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._writer, lambda: self._in_transaction(work))

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._readers, lambda: self._query(work))

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        # Statement by statement: executescript() would commit the surrounding transaction first.
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if version is None:
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("instance_id", uuid.uuid4().hex),
                    ("generation", "0"),
                ],
            )
        elif int(version["value"]) != SCHEMA_VERSION:
            raise CacheStoreError(
                f"cache store schema version {version['value']} is not the supported {SCHEMA_VERSION}"
            )

    # -- EntryStore --------------------------------------------------------------------------------

    async def insert(self, entry: CacheEntry) -> list[EntryRef]:
        row: dict[str, object] = {
            "entry_id": entry.entry_id,
            **entry_columns(entry),
            "last_used_at": max(entry.created_at, entry.last_hit_at or entry.created_at),
        }
        insert_sql = (
            f"INSERT INTO entries ({', '.join(row)}) VALUES ({', '.join(':' + column for column in row)})"
        )

        def work(conn: sqlite3.Connection) -> list[EntryRef]:
            replaced = conn.execute(
                f"DELETE FROM entries WHERE exact_key = ? RETURNING {_REF_COLUMNS}", (entry.exact_key,)
            ).fetchall()
            conn.execute(insert_sql, row)
            _bump_generation(conn)
            return _refs(replaced)

        return await self._write(work)

    async def get(self, entry_ids: Sequence[str]) -> dict[str, CacheEntry]:
        ids = list(dict.fromkeys(entry_ids))

        def work(conn: sqlite3.Connection) -> dict[str, CacheEntry]:
            found: dict[str, CacheEntry] = {}
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                rows = conn.execute(
                    f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE entry_id IN ({', '.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                found.update((row["entry_id"], _entry_from_row(row)) for row in rows)
            return found

        return await self._read(work) if ids else {}

    async def get_by_exact_key(self, exact_key: str) -> CacheEntry | None:
        def work(conn: sqlite3.Connection) -> CacheEntry | None:
            row = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE exact_key = ?", (exact_key,)
            ).fetchone()
            return None if row is None else _entry_from_row(row)

        return await self._read(work)

    async def scan(self, where: EntryFilter) -> list[EntryRef]:
        if where.is_empty:
            return []
        clause, params = _where(where)
        return await self._read(
            lambda conn: _refs(
                conn.execute(f"SELECT {_REF_COLUMNS} FROM entries WHERE {clause}", params).fetchall()
            )
        )

    async def delete(self, where: EntryFilter) -> list[EntryRef]:
        if where.is_empty:
            return []
        clause, params = _where(where)

        def work(conn: sqlite3.Connection) -> list[EntryRef]:
            rows = conn.execute(
                f"DELETE FROM entries WHERE {clause} RETURNING {_REF_COLUMNS}", params
            ).fetchall()
            if rows:
                _bump_generation(conn)
            return _refs(rows)

        return await self._write(work)

    async def touch(self, usage: Sequence[EntryUsage]) -> None:
        if not usage:
            return
        rows = [(u.hits, u.last_hit_at, u.saved, u.entry_id) for u in usage]

        def work(conn: sqlite3.Connection) -> None:
            # SQLite's two-argument max() is NULL when either side is; coalesce picks the defined one.
            conn.executemany(
                "UPDATE entries SET hits = hits + ?1, "
                "last_hit_at = coalesce(max(last_hit_at, ?2), ?2, last_hit_at), "
                "last_used_at = max(last_used_at, coalesce(?2, last_used_at)), "
                "saved = saved + ?3 WHERE entry_id = ?4",
                rows,
            )

        await self._write(work)

    async def add_feedback(
        self, entry_id: str, threshold_delta: float, negative_delta: int
    ) -> FeedbackState | None:
        def work(conn: sqlite3.Connection) -> FeedbackState | None:
            row = conn.execute(
                "UPDATE entries SET threshold_adjust = threshold_adjust + ?, "
                "negative_feedback = negative_feedback + ? WHERE entry_id = ? "
                "RETURNING threshold_adjust, negative_feedback",
                (threshold_delta, negative_delta, entry_id),
            ).fetchone()
            return None if row is None else FeedbackState(row["threshold_adjust"], row["negative_feedback"])

        return await self._write(work)

    async def evict(self, plan: EvictionPlan) -> list[EntryRef]:
        if plan.count <= 0:
            return []
        if plan.order is EvictionOrder.LRU:
            order = "last_used_at, entry_id"
        else:
            order = (
                "(created_at > :now - :grace), saved / (max(:now - created_at, 0) + :floor), "
                "last_used_at, entry_id"
            )
        sql = (
            f"DELETE FROM entries WHERE entry_id IN (SELECT entry_id FROM entries ORDER BY {order} "
            f"LIMIT :count) RETURNING {_REF_COLUMNS}"
        )
        params = {"now": plan.now, "grace": plan.grace_s, "floor": plan.age_floor_s, "count": plan.count}

        def work(conn: sqlite3.Connection) -> list[EntryRef]:
            rows = conn.execute(sql, params).fetchall()
            if rows:
                _bump_generation(conn)
            return _refs(rows)

        return await self._write(work)

    async def count(self) -> int:
        return await self._read(lambda conn: int(conn.execute("SELECT count(*) FROM entries").fetchone()[0]))

    async def iter_vectors(self, embedder_key: str, batch_size: int = 4096) -> AsyncIterator[list[VectorRow]]:
        after = ""
        while True:

            def work(conn: sqlite3.Connection, after: str = after) -> list[sqlite3.Row]:
                return conn.execute(
                    "SELECT entry_id, partition_key, dim, embedding FROM entries "
                    "WHERE embedder_key = ? AND entry_id > ? ORDER BY entry_id LIMIT ?",
                    (embedder_key, after, batch_size),
                ).fetchall()

            rows = await self._read(work)
            if not rows:
                return
            yield [
                VectorRow(row["entry_id"], row["partition_key"], decode_vector(row["embedding"], row["dim"]))
                for row in rows
            ]
            after = rows[-1]["entry_id"]

    async def identity(self) -> StoreIdentity:
        def work(conn: sqlite3.Connection) -> StoreIdentity:
            values = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            return StoreIdentity(str(values["instance_id"]), int(values["generation"]))

        return await self._read(work)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
