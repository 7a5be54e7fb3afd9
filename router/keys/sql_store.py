"""The key table and its statements, once for both SQL stores (SQLite, PostgreSQL).

Each store runs the statements in its own transactions (``_run``) with its own placeholder; the
table layout, the version bump and the row conversions live here so the stores cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Protocol, TypeVar, cast

from tierwise.router.keys.record import KeyBudget, KeyNotFound, KeyRecord, Window

T = TypeVar("T")
TABLE = "tierwise_keys"
VERSION_TABLE = "tierwise_keys_version"
COLUMNS = (
    "id",
    "name",
    "tenant",
    "secret_sha256",
    "created_at",
    "admin",
    "expires_at",
    "revoked_at",
    "rpm",
    "tpm",
    "budget_usd",
    "budget_window",
    "previous_sha256",
    "previous_until",
)


def schema(real: str) -> list[str]:
    """``real``: the dialect's double type. Money is text (exact), timestamps epoch seconds."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at {real} NOT NULL,
    admin BOOLEAN NOT NULL,
    expires_at {real},
    revoked_at {real},
    rpm BIGINT,
    tpm BIGINT,
    budget_usd TEXT,
    budget_window TEXT,
    previous_sha256 TEXT,
    previous_until {real}
)""",
        f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (one INTEGER PRIMARY KEY CHECK (one = 1), version BIGINT NOT NULL)",
        f"INSERT INTO {VERSION_TABLE} (one, version) VALUES (1, 0) ON CONFLICT DO NOTHING",
    ]


def to_row(record: KeyRecord) -> tuple[Any, ...]:
    budget = record.budget
    return (
        record.id,
        record.name,
        record.tenant,
        record.secret_sha256,
        record.created_at,
        record.admin,
        record.expires_at,
        record.revoked_at,
        record.rpm,
        record.tpm,
        None if budget is None else str(budget.usd),
        None if budget is None else budget.window,
        record.previous_sha256,
        record.previous_until,
    )


def from_row(row: Sequence[Any]) -> KeyRecord:
    values = dict(zip(COLUMNS, row, strict=True))
    usd, window = values.pop("budget_usd"), values.pop("budget_window")
    values["admin"] = bool(values["admin"])
    budget = None if usd is None else KeyBudget(Decimal(usd), cast(Window, window))
    return KeyRecord(**values, budget=budget)


class Cursor(Protocol):
    def execute(self, query: Any, params: Sequence[Any] = ...) -> Any: ...


class SqlKeyStore:
    """The ``KeyStore`` methods over ``_run`` (one transaction) and ``placeholder``."""

    name = "sql"
    placeholder = "?"

    def _run(self, work: Callable[[Cursor], T]) -> T:
        raise NotImplementedError

    def version(self) -> int:
        return self._run(self._version)

    @staticmethod
    def _version(cursor: Cursor) -> int:
        return int(cursor.execute(f"SELECT version FROM {VERSION_TABLE} WHERE one = 1").fetchone()[0])

    def load(self) -> tuple[int, list[KeyRecord]]:
        def read(cursor: Cursor) -> tuple[int, list[KeyRecord]]:
            rows = cursor.execute(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} ORDER BY created_at").fetchall()
            return self._version(cursor), [from_row(row) for row in rows]

        return self._run(read)

    def insert(self, record: KeyRecord) -> None:
        marks = ", ".join(self.placeholder for _ in COLUMNS)

        def write(cursor: Cursor) -> None:
            cursor.execute(f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({marks})", to_row(record))
            self._bump(cursor)

        self._run(write)

    def replace(self, record: KeyRecord) -> None:
        p = self.placeholder
        sets = ", ".join(f"{column} = {p}" for column in COLUMNS[1:])

        def write(cursor: Cursor) -> None:
            changed = cursor.execute(
                f"UPDATE {TABLE} SET {sets} WHERE id = {p}", (*to_row(record)[1:], record.id)
            )
            if changed.rowcount == 0:
                raise KeyNotFound(record.id)
            self._bump(cursor)

        self._run(write)

    @staticmethod
    def _bump(cursor: Cursor) -> None:
        cursor.execute(f"UPDATE {VERSION_TABLE} SET version = version + 1 WHERE one = 1")
