"""Stored keys in Redis, shared by every replica (store.kind redis without ledger.postgres_dsn).

One hash holds every key as JSON by id, one maps names to ids (a name is unique), one counter is
the version. Each write is one Lua script, so a name check and its write, and the version bump,
are atomic. Redis must persist (AOF or RDB) for keys to survive its restart: deploy/README says so.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, cast

import redis

from tierwise.router.keys.record import (
    KeyBudget,
    KeyConflict,
    KeyNotFound,
    KeyRecord,
    KeyStoreUnavailable,
    Window,
)

_PREFIX = "tierwise:keys"
_INSERT = """
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return redis.call('INCR', KEYS[3])
"""
_REPLACE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCR', KEYS[3])
"""


def to_json(record: KeyRecord) -> str:
    values: dict[str, Any] = {
        name: getattr(record, name) for name in record.__dataclass_fields__ if name != "budget"
    }
    if record.budget is not None:
        values["budget"] = {"usd": str(record.budget.usd), "window": record.budget.window}
    return json.dumps(values, sort_keys=True)


def from_json(text: str | bytes) -> KeyRecord:
    values = json.loads(text)
    budget = values.pop("budget", None)
    return KeyRecord(
        **values,
        budget=None if budget is None else KeyBudget(Decimal(budget["usd"]), cast(Window, budget["window"])),
    )


class RedisKeyStore:
    name = "redis"

    def __init__(self, client: redis.Redis, prefix: str = _PREFIX) -> None:
        self._redis = client
        self._keys = (f"{prefix}:by_id", f"{prefix}:by_name", f"{prefix}:version")
        self._insert = client.register_script(_INSERT)
        self._replace = client.register_script(_REPLACE)

    @classmethod
    def from_url(cls, url: str, timeout_s: float) -> RedisKeyStore:
        return cls(redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s))

    def version(self) -> int:
        try:
            return int(self._redis.get(self._keys[2]) or 0)
        except redis.RedisError as exc:
            raise KeyStoreUnavailable(f"key store {self.name}: {exc}") from None

    def load(self) -> tuple[int, list[KeyRecord]]:
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(self._keys[2])
                pipe.hvals(self._keys[0])
                version, rows = pipe.execute()
        except redis.RedisError as exc:
            raise KeyStoreUnavailable(f"key store {self.name}: {exc}") from None
        records = sorted((from_json(row) for row in rows), key=lambda r: (r.created_at, r.id))
        return int(version or 0), records

    def insert(self, record: KeyRecord) -> None:
        if self._call(self._insert, [record.id, record.name, to_json(record)]) < 0:
            raise KeyConflict(f"a key named {record.name!r} exists")

    def replace(self, record: KeyRecord) -> None:
        if self._call(self._replace, [record.id, to_json(record)]) < 0:
            raise KeyNotFound(record.id)

    def _call(self, script: Any, args: list[str]) -> int:
        try:
            return int(script(keys=list(self._keys), args=args))
        except redis.RedisError as exc:
            raise KeyStoreUnavailable(f"key store {self.name}: {exc}") from None

    def close(self) -> None:
        self._redis.close()
