"""API keys kept as data: created, listed, revoked and rotated by ``tierwise keys`` or the Admin
RPCs, read by every replica without a restart.

``record`` holds ``KeyRecord`` and the ``KeyStore`` protocol; ``sqlite_store`` (embedded),
``postgres_store`` and ``redis_store`` (shared) implement it over ``sql_store`` or Redis;
``factory`` picks one from the config; ``manage`` holds the rules of each change; ``cache`` the
snapshot a replica authenticates from, and what it does while the store cannot be read.
"""

from tierwise.router.keys.cache import StoredKeys
from tierwise.router.keys.factory import open_key_store, open_stored_keys
from tierwise.router.keys.manage import KeyInputError, KeyManager, NewSecret, parse_budget, parse_duration
from tierwise.router.keys.record import (
    SECRET_PREFIX,
    KeyBudget,
    KeyRecord,
    KeyStore,
    KeyStoreUnavailable,
)

__all__ = [
    "SECRET_PREFIX",
    "KeyBudget",
    "KeyInputError",
    "KeyManager",
    "KeyRecord",
    "KeyStore",
    "KeyStoreUnavailable",
    "NewSecret",
    "StoredKeys",
    "open_key_store",
    "open_stored_keys",
    "parse_budget",
    "parse_duration",
]
