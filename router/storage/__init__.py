"""Small helpers the stores share: a PostgreSQL session with reconnects, batched SQLite inserts."""

from tierwise.router.storage.postgres_session import PostgresSession
from tierwise.router.storage.sqlite_batch import in_transaction, insert_batch

__all__ = [
    "PostgresSession",
    "in_transaction",
    "insert_batch",
]
