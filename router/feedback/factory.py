"""Which feedback store a configuration uses: the table judgments land in, and the store the Feedback
RPC and the learning sampler record through (the table itself, or the Redis stream in front of it)."""

from __future__ import annotations

from tierwise.router.config import Config
from tierwise.router.feedback.postgres_store import PostgresFeedbackStore
from tierwise.router.feedback.redis_store import RedisFeedbackStore
from tierwise.router.feedback.store import FeedbackStore, FeedbackTable, SqliteFeedbackStore

_DAY_S = 86400.0


def open_feedback_table(config: Config) -> FeedbackTable:
    """PostgreSQL in shared mode with ledger.postgres_dsn, else this replica's SQLite file."""
    days = config.feedback.retention_days
    retention_s = None if days is None else days * _DAY_S
    if config.store.kind == "redis" and config.ledger.postgres_dsn:
        return PostgresFeedbackStore(config.ledger.postgres_dsn, retention_s=retention_s)
    return SqliteFeedbackStore(config.store.path / "feedback.sqlite3", retention_s=retention_s)


def feedback_table_exists(config: Config) -> bool:
    """False only for an embedded store never written to (readers then have no judgments)."""
    postgres = config.store.kind == "redis" and bool(config.ledger.postgres_dsn)
    return postgres or (config.store.path / "feedback.sqlite3").exists()


def open_feedback_store(config: Config) -> FeedbackStore:
    """Needs a running event loop in shared mode: the consumer worker starts here."""
    table = open_feedback_table(config)
    if config.store.kind != "redis" or config.store.url is None:
        return table
    try:
        store = RedisFeedbackStore.from_url(config.store.url, table, config.feedback)
    except BaseException:
        table.close()  # the caller never got it, so nothing else would close it
        raise
    store.start()
    return store
