"""The embedded budget store: one SQLite file, one ``BEGIN IMMEDIATE`` transaction per operation.

``BEGIN IMMEDIATE`` takes the database's write lock before reading, so the
check and the reservation cannot interleave with another writer, whether a
thread of this process or another process on the same file. The blocking
calls run in a worker thread; the journal is WAL with synchronous=NORMAL,
which keeps every commit through a process crash (not through power loss).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from tierwise.router.budgets.errors import BudgetStoreUnavailable
from tierwise.router.budgets.store import Amount, BudgetLine, LineState, ReserveResult, SettleResult
from tierwise.router.storage import in_transaction

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_usage (
    budget TEXT NOT NULL, period TEXT NOT NULL,
    used_usd_nanos INTEGER NOT NULL, used_tokens INTEGER NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (budget, period));
CREATE TABLE IF NOT EXISTS budget_reservations (
    id TEXT NOT NULL, budget TEXT NOT NULL, period TEXT NOT NULL,
    usd_nanos INTEGER NOT NULL, tokens INTEGER NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (id, budget, period));
CREATE INDEX IF NOT EXISTS budget_reservations_line ON budget_reservations (budget, period);
CREATE INDEX IF NOT EXISTS budget_reservations_expiry ON budget_reservations (expires_at);
CREATE TABLE IF NOT EXISTS budget_alerts (
    budget TEXT NOT NULL, period TEXT NOT NULL, mark TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (budget, period, mark));
CREATE TABLE IF NOT EXISTS budget_finished (id TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS budget_finished_expiry ON budget_finished (expires_at);
"""


class SqliteBudgetStore:
    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = path
        self.name = f"SQLite at {path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    async def reserve(
        self, reservation_id: str, lines: Sequence[BudgetLine], amount: Amount, now: float, ttl_s: float
    ) -> ReserveResult:
        def run(db: sqlite3.Connection) -> ReserveResult:
            _purge(db, now)
            states = tuple(_state(db, line, now) for line in lines)
            for index, (line, state) in enumerate(zip(lines, states, strict=True)):
                if line.hard.exceeded_by(state.committed + amount):
                    return ReserveResult(states, refused=index)
            db.executemany(
                "INSERT INTO budget_reservations VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (reservation_id, line.budget, line.period, amount.usd_nanos, amount.tokens, now + ttl_s)
                    for line in lines
                ],
            )
            return ReserveResult(states)

        return await self._transaction(run)

    async def settle(
        self, reservation_id: str, lines: Sequence[BudgetLine], actual: Amount, now: float, keep_s: float
    ) -> SettleResult:
        def run(db: sqlite3.Connection) -> SettleResult:
            if not _finish(db, reservation_id, now, keep_s):
                return SettleResult(tuple(_state(db, line, now).used for line in lines), applied=False)
            used = []
            for line in lines:
                row = db.execute(
                    "INSERT INTO budget_usage VALUES (?, ?, ?, ?, ?) ON CONFLICT (budget, period) DO UPDATE SET"
                    " used_usd_nanos = used_usd_nanos + excluded.used_usd_nanos,"
                    " used_tokens = used_tokens + excluded.used_tokens"
                    " RETURNING used_usd_nanos, used_tokens",
                    (line.budget, line.period, actual.usd_nanos, actual.tokens, line.expires_at),
                ).fetchone()
                used.append(Amount(row[0], row[1]))
            return SettleResult(tuple(used))

        return await self._transaction(run)

    async def release(
        self, reservation_id: str, lines: Sequence[BudgetLine], now: float, keep_s: float
    ) -> bool:
        return await self._transaction(lambda db: _finish(db, reservation_id, now, keep_s))

    async def usage(self, lines: Sequence[BudgetLine], now: float) -> tuple[LineState, ...]:
        return await self._transaction(lambda db: tuple(_state(db, line, now) for line in lines))

    async def mark_alerts(self, line: BudgetLine, marks: Sequence[str], now: float) -> tuple[str, ...]:
        def run(db: sqlite3.Connection) -> tuple[str, ...]:
            new = []
            for mark in marks:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO budget_alerts VALUES (?, ?, ?, ?)",
                    (line.budget, line.period, mark, line.expires_at),
                )
                if cursor.rowcount == 1:
                    new.append(mark)
            return tuple(new)

        return await self._transaction(run)

    async def aclose(self) -> None:
        with self._lock:
            self._db.close()

    async def _transaction(self, body: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._run, body)

    def _run(self, body: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return in_transaction(self._db, self._lock, body)
        except sqlite3.Error as exc:
            raise BudgetStoreUnavailable(f"budget store {self.name} failed: {exc}") from exc


def _purge(db: sqlite3.Connection, now: float) -> None:
    db.execute("DELETE FROM budget_reservations WHERE expires_at <= ?", (now,))
    db.execute("DELETE FROM budget_usage WHERE expires_at <= ?", (now,))
    db.execute("DELETE FROM budget_alerts WHERE expires_at <= ?", (now,))


def _state(db: sqlite3.Connection, line: BudgetLine, now: float) -> LineState:
    used = db.execute(
        "SELECT used_usd_nanos, used_tokens FROM budget_usage WHERE budget = ? AND period = ?",
        (line.budget, line.period),
    ).fetchone()
    in_flight = db.execute(
        "SELECT COALESCE(SUM(usd_nanos), 0), COALESCE(SUM(tokens), 0) FROM budget_reservations"
        " WHERE budget = ? AND period = ? AND expires_at > ?",
        (line.budget, line.period, now),
    ).fetchone()
    return LineState(Amount(*used) if used else Amount(), Amount(*in_flight))


def _finish(db: sqlite3.Connection, reservation_id: str, now: float, keep_s: float) -> bool:
    """Drop the reservation and remember its id as finished; False when it already was (a no-op)."""
    db.execute("DELETE FROM budget_finished WHERE expires_at <= ?", (now,))
    marked = db.execute(
        "INSERT OR IGNORE INTO budget_finished VALUES (?, ?)", (reservation_id, now + keep_s)
    ).rowcount
    if marked != 1:
        return False
    db.execute("DELETE FROM budget_reservations WHERE id = ?", (reservation_id,))
    return True
