"""Which key store a configuration uses, chosen as the other stores choose: PostgreSQL in shared
mode with ledger.postgres_dsn, Redis in shared mode without it, else SQLite under store.path."""

from __future__ import annotations

from tierwise.router.budgets import BudgetManager
from tierwise.router.config import Config
from tierwise.router.keys.cache import StoredKeys
from tierwise.router.keys.manage import key_budgets
from tierwise.router.keys.postgres_store import PostgresKeyStore
from tierwise.router.keys.record import KeyStore
from tierwise.router.keys.redis_store import RedisKeyStore
from tierwise.router.keys.sqlite_store import SqliteKeyStore


def open_key_store(config: Config) -> KeyStore:
    timeout_s = config.keys.timeout_s
    if config.store.kind == "redis" and config.ledger.postgres_dsn:
        return PostgresKeyStore(config.ledger.postgres_dsn, timeout_s=timeout_s)
    if config.store.kind == "redis" and config.store.url is not None:
        return RedisKeyStore.from_url(config.store.url, timeout_s)
    return SqliteKeyStore(config.store.path / "keys.sqlite3", timeout_s=timeout_s)


def open_stored_keys(config: Config, budgets: BudgetManager) -> StoredKeys | None:
    """The stored keys a server authenticates from, their budgets handed to ``budgets`` on every
    change; None when auth is off (auth.mode none). Not read until ``start``."""
    if config.auth.mode != "api_key":
        return None
    keys = StoredKeys(open_key_store(config), config.keys)
    keys.add_listener(lambda records: budgets.set_key_budgets(key_budgets(records)))
    return keys
