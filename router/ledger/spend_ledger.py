"""The spend ledger: every request's cost, written to a store off the request path.

``record`` is what the request path pays: one JSON line appended to the journal
(``tierwise.router.ledger.journal``) with a plain ``write()``, no database call, and the
record queued in memory. A background task takes batches (``batch_size``
records, or whatever arrived within ``flush_interval_s``), writes them to the
store in a worker thread, and only then moves the journal's committed offset
past them. Records the queue does not hold (replayed after a restart, or
spilled while the store was down and the queue full) are read back from the
journal instead.

Durability: a record whose ``record`` call returned survives the process
crashing or being killed (-9): the next ledger on the same directory replays the
journal past the committed offset, and the stores ignore request ids they
already hold, so each record lands exactly once. A power loss can take the last
records the kernel had not yet written out, unless ``fsync_journal`` is set
(one fdatasync per record). While the store is slow or down, records simply
stay in the journal (on disk, not in memory) and the writer retries with
jittered exponential backoff; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tierwise.cache.backoff import Backoff, Jitter
from tierwise.router.config import Config
from tierwise.router.ledger.journal import Journal, JournalLine
from tierwise.router.ledger.record import SpendRecord, decode_line, encode_line
from tierwise.router.ledger.reports import SinkReports, SpendQueries

log = logging.getLogger("tierwise.ledger")

_SCAN_LINES = 10_000
_MAX_ROTATE_TAIL = 1 << 20  # rotation copies the uncommitted tail; only when it is this short


class SpendSink(SpendQueries, Protocol):
    """A durable store of spend records. Called from worker threads, one call at a time."""

    def write(self, records: Sequence[SpendRecord]) -> int:
        """Store the records in one transaction; request ids already stored are skipped.

        Returns how many were new. Raises when nothing was stored.
        """
        ...

    def get(self, request_id: str) -> SpendRecord | None: ...

    def purge_older_than(self, seconds: float, *, now: float | None = None) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LedgerStats:
    backlog: int  # records journalled (or held in memory) and not yet in the store
    journal_bytes: int
    written: int  # records the store took, since this ledger started
    write_failures: int
    journal_errors: int  # appends that failed; those records wait in memory instead
    rejected_lines: int  # journal lines that could not be read back (moved to rejected.jsonl)
    store_ok: bool  # the last store call succeeded


@dataclass(frozen=True, slots=True)
class _Queued:
    start: int  # the record's line in the journal
    end: int
    record: SpendRecord


@dataclass(frozen=True, slots=True)
class _Batch:
    lines: int  # journal lines it covers
    end: int  # the journal offset after them
    records: list[SpendRecord]
    from_queue: bool


class SpendLedger(SinkReports):
    """Its report queries (``totals``, ``samples``) read the store: records still waiting in the
    journal are not counted, so ``flush()`` first for an exact cut."""

    def __init__(
        self,
        directory: Path,
        sink: SpendSink,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 1.0,
        retention_s: float | None = None,
        fsync_journal: bool = False,
        rotate_bytes: int = 64 << 20,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 30.0,
        purge_interval_s: float = 3600.0,
        max_queued: int | None = None,
    ) -> None:
        if batch_size <= 0 or flush_interval_s <= 0:
            raise ValueError("batch_size and flush_interval_s must be positive")
        super().__init__(sink)
        self._sink = sink
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retention_s = retention_s
        self._rotate_bytes = rotate_bytes
        # Equal jitter: replicas that lost the same store do not retry in step.
        self._retry = Backoff(retry_initial_s, retry_max_s, jitter=Jitter.EQUAL)
        self._purge_interval_s = purge_interval_s
        self._journal = Journal(directory, fsync=fsync_journal)
        self._rejected_path = directory / "rejected.jsonl"
        self._lock = threading.Lock()  # journal appends, offsets and the pending index
        self._pending: dict[str, tuple[int, int]] = {}  # request id -> its line in the journal
        self._memory: list[SpendRecord] = []  # records the journal refused (disk full, ...)
        self._backlog = 0  # journal lines past the committed offset
        # The newest journal lines, decoded: the writer's usual source. While ``_queue_open``
        # the queue ends at the journal's end; once full it closes (later records are read
        # back from the journal) until the writer has caught up.
        self._queue: deque[_Queued] = deque()
        self._queue_open = True
        self._max_queued = max(10_000, 4 * batch_size) if max_queued is None else max_queued
        self._oldest = time.monotonic()  # when the oldest unwritten record arrived
        self._counts = {"written": 0, "write_failures": 0, "journal_errors": 0, "rejected_lines": 0}
        self._store_ok = True
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._flush_now = False
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._index_backlog()

    def _index_backlog(self) -> None:
        """Find the records a previous run journalled but did not store."""
        position, size = self._journal.committed, self._journal.size
        while position < size:
            lines = self._journal.read(position, size, _SCAN_LINES)
            for line in lines:
                self._backlog += 1
                with contextlib.suppress(ValueError, TypeError):
                    self._pending[decode_line(line.data).request_id] = (line.start, line.end)
            position = lines[-1].end
        if self._backlog:
            log.info("replaying spend records from the journal", extra={"records": self._backlog})

    # -- the request path ----------------------------------------------------

    def record(self, rec: SpendRecord) -> None:
        """Journal one record; it reaches the store in the background. Never raises for I/O."""
        line = encode_line(rec)
        with self._lock:
            try:
                start, end = self._journal.append(line)
            except OSError as exc:
                # Kept in memory and written by the writer: lost only if the process dies first.
                self._memory.append(rec)
                self._counts["journal_errors"] += 1
                log.error("spend journal append failed; record held in memory", extra={"error": str(exc)})
            else:
                self._pending[rec.request_id] = (start, end)
                self._backlog += 1
                if self._queue_open and len(self._queue) < self._max_queued:
                    self._queue.append(_Queued(start, end, rec))
                else:
                    self._queue_open = False
            waiting = self._backlog + len(self._memory)
        if waiting == 1:
            self._oldest = time.monotonic()
        if waiting == 1 or waiting == self._batch_size:
            self._signal()

    def _signal(self) -> None:
        if self._loop is None:
            return  # not started: start() looks at the backlog
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._oldest = time.monotonic() - self._flush_interval_s  # replayed records go at once
        self._tasks.append(asyncio.create_task(self._write_forever(), name="spend-ledger-writer"))
        if self._retention_s is not None:
            self._tasks.append(asyncio.create_task(self._purge_forever(), name="spend-ledger-retention"))
        self._wake.set()

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Write everything pending (waiting up to ``timeout_s`` for the store), then close.

        Whatever the store did not take in time stays in the journal for the next start.
        """
        self._closing = True
        self._wake.set()
        for task in self._tasks[1:]:
            task.cancel()
        if self._tasks:
            writer = self._tasks[0]
            try:
                await asyncio.wait_for(asyncio.shield(writer), timeout_s)
            except TimeoutError:
                writer.cancel()
                log.warning(
                    "spend store did not take every record before shutdown; they stay in the journal",
                    extra={"records": self._backlog + len(self._memory)},
                )
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self._sink.close)  # waits for a store call still running in its thread
        with self._lock:
            self._journal.close()

    @property
    def running(self) -> bool:
        """Started and not yet closing: its writer takes what is recorded."""
        return bool(self._tasks) and not self._closing

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Write everything recorded so far now; False when the store did not take it in time."""
        if not self._tasks:
            raise RuntimeError("the ledger is not started")
        try:
            async with asyncio.timeout(timeout_s):
                while self._backlog or self._memory:
                    self._flush_now = True
                    self._progress.clear()
                    self._wake.set()
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    # -- the writer ----------------------------------------------------------

    async def _write_forever(self) -> None:
        while True:
            await self._wait_for_batch()
            if not (self._backlog or self._memory):
                if self._closing:
                    return
                continue
            try:
                await self._write_batch()
            except Exception:  # a bug, not a store failure: keep the records, keep going
                log.exception("spend ledger writer failed; retrying")
                await asyncio.sleep(self._retry.cap_s)

    async def _wait_for_batch(self) -> None:
        while not (self._backlog or self._memory or self._closing):
            self._wake.clear()
            await self._wake.wait()
        while not (self._closing or self._flush_now or self._backlog + len(self._memory) >= self._batch_size):
            remaining = self._oldest + self._flush_interval_s - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    def _take_batch(self) -> _Batch | None:
        """The next batch from the queue, if the queue starts at the committed offset (lock held)."""
        if not self._queue or self._queue[0].start != self._journal.committed:
            return None
        taken = [self._queue[i] for i in range(min(self._batch_size, len(self._queue)))]
        return _Batch(len(taken), taken[-1].end, [q.record for q in taken], True)

    def _read_batch(self, start: int, limit: int) -> _Batch:
        """The next batch read back from the journal, up to ``limit`` (in a worker thread)."""
        lines = self._journal.read(start, limit, self._batch_size)
        records = []
        for line in lines:
            try:
                records.append(decode_line(line.data))
            except (ValueError, TypeError) as exc:
                self._reject(line, exc)
        return _Batch(len(lines), lines[-1].end if lines else start, records, False)

    def _reject(self, line: JournalLine, error: Exception) -> None:
        # Unreadable (a write cut short by a power loss): kept aside for a person, not retried.
        self._counts["rejected_lines"] += 1
        log.error(
            "unreadable spend journal line set aside", extra={"offset": line.start, "error": str(error)}
        )
        with self._rejected_path.open("ab") as file:
            file.write(line.data + b"\n")

    async def _write_batch(self) -> None:
        started = time.monotonic()
        with self._lock:
            start = self._journal.committed
            limit = self._queue[0].start if self._queue else self._journal.size
            memory = self._memory[: self._batch_size]
            batch = self._take_batch()
        if batch is None:
            batch = await asyncio.to_thread(self._read_batch, start, limit)
        await self._store(batch.records + memory)
        try:
            await asyncio.to_thread(self._journal.commit, batch.end)
        except OSError as exc:  # the offset moved in memory; a restart replays a little more
            log.warning("could not save the spend journal offset", extra={"error": str(exc)})
        with self._lock:
            for _ in range(batch.lines if batch.from_queue else 0):
                self._queue.popleft()
            for rec in batch.records:
                where = self._pending.get(rec.request_id)
                if where is not None and where[1] <= batch.end:
                    del self._pending[rec.request_id]
            self._backlog -= batch.lines
            del self._memory[: len(memory)]
            if not self._queue and self._journal.committed == self._journal.size:
                self._queue_open = True  # caught up: new records can be queued again
            self._maybe_rotate()
        if self._backlog or self._memory:
            self._oldest = started
        else:
            self._flush_now = False
        self._progress.set()

    async def _store(self, records: list[SpendRecord]) -> None:
        self._retry.reset()  # each batch starts from the initial delay
        while records:
            try:
                written = await asyncio.to_thread(self._sink.write, records)
            except Exception as exc:
                self._counts["write_failures"] += 1
                self._store_ok = False
                delay = self._retry.next_delay()
                log.warning(
                    "spend store write failed; records stay in the journal",
                    extra={
                        "records": self._backlog + len(self._memory),
                        "retry_s": delay,
                        "error": repr(exc),
                    },
                )
                await asyncio.sleep(delay)
                continue
            self._counts["written"] += written
            self._store_ok = True
            return

    def _maybe_rotate(self) -> None:
        journal = self._journal
        if journal.committed - journal.header_end < self._rotate_bytes:
            return
        if journal.size - journal.committed > _MAX_ROTATE_TAIL:
            return
        try:
            shift = journal.rotate()
        except OSError as exc:
            log.warning("could not rotate the spend journal", extra={"error": str(exc)})
            return
        self._pending = {rid: (s + shift, e + shift) for rid, (s, e) in self._pending.items()}
        self._queue = deque(_Queued(q.start + shift, q.end + shift, q.record) for q in self._queue)

    async def _purge_forever(self) -> None:
        while True:
            try:
                await self.purge()
            except Exception as exc:
                log.warning("spend retention purge failed", extra={"error": repr(exc)})
            await asyncio.sleep(self._purge_interval_s)

    # -- queries -------------------------------------------------------------

    async def purge(self) -> int:
        """Delete stored records older than the retention period; returns how many."""
        if self._retention_s is None:
            return 0
        removed = await asyncio.to_thread(self._sink.purge_older_than, self._retention_s)
        if removed:
            log.info("purged old spend records", extra={"records": removed})
        return removed

    async def lookup(self, request_id: str, tenant: str) -> SpendRecord | None:
        """The record of ``request_id`` if it belongs to ``tenant``, pending or stored; else None."""
        with self._lock:
            where = self._pending.get(request_id)
            line = self._journal.pread(*where) if where is not None else None
            held = [r for r in self._memory if r.request_id == request_id]
        found: SpendRecord | None = None
        if line is not None:
            with contextlib.suppress(ValueError, TypeError):
                found = decode_line(line)
            if found is not None and found.request_id != request_id:
                found = None
        if found is None and held:
            found = held[-1]
        if found is None:
            found = await asyncio.to_thread(self._sink.get, request_id)
        return found if found is not None and found.tenant == tenant else None

    def stats(self) -> LedgerStats:
        return LedgerStats(
            backlog=self._backlog + len(self._memory),
            journal_bytes=self._journal.size,
            written=self._counts["written"],
            write_failures=self._counts["write_failures"],
            journal_errors=self._counts["journal_errors"],
            rejected_lines=self._counts["rejected_lines"],
            store_ok=self._store_ok,
        )


def open_spend_sink(config: Config) -> SpendSink:
    """The store the ledger settings name: PostgreSQL when a DSN is set, else the SQLite file."""
    if config.ledger.postgres_dsn:
        from tierwise.router.ledger.postgres_sink import (
            PostgresSpendSink,  # libpq only when PostgreSQL is used
        )

        return PostgresSpendSink(config.ledger.postgres_dsn)
    from tierwise.router.ledger.sqlite_sink import SqliteSpendSink

    return SqliteSpendSink(config.store.path / "spend.sqlite3")


def build_ledger(config: Config) -> SpendLedger | None:
    """The ledger the config asks for (None when ``ledger.enabled`` is off); call ``start()`` on it."""
    settings = config.ledger
    if not settings.enabled:
        return None
    sink = open_spend_sink(config)
    try:
        return SpendLedger(
            config.store.path / "ledger",
            sink,
            batch_size=settings.batch_size,
            flush_interval_s=settings.flush_interval_s,
            retention_s=settings.retention_days * 86400 if settings.retention_days is not None else None,
            fsync_journal=settings.fsync_journal,
        )
    except BaseException:
        sink.close()  # the journal could not be opened: the ledger that would close the sink never was
        raise
