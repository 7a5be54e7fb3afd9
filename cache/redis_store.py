"""The shared entry store: Redis, so that every replica serves what any replica cached.

Keys (``P`` is ``{prefix}:``; the braces are a Redis Cluster hash tag, so all of
one cache's keys sit in one slot and one Lua script may touch any of them):

- ``P e:<id>``: a hash with the whole entry; Redis expires it at the entry's
  absolute ``expires_at`` (PEXPIREAT, never sliding).
- ``P x:<exact key>``: the id of the entry with that exact key, same expiry.
- ``P t:<tenant>``, ``P p:<partition>``: sets of entry ids, for invalidation;
  each set expires with its longest-lived member.
- ``P refs``: entry id -> [partition, embedder, tenant, exact key], the little
  that is needed to remove an entry from every key and every replica's index
  after Redis already expired its hash; ``P z:created``, ``z:expires``, ``z:used``
  (last created or hit, for LRU), ``z:saved``: sorted sets of entry ids. These
  outlive expired entries until the periodic purge deletes them (lazily).
- ``P meta``: the store's instance id and the number of changes ever appended.
- ``P changes``: the replication stream (see ``cache/replication.py``): one
  event per insert or deletion, appended by the same Lua script as the change,
  so a change and its event are atomic; trimmed to about ``stream_maxlen``.

Capacity eviction runs in Lua and never leaves fewer than ``EvictionPlan.keep``
entries, so replicas evicting at once do not evict twice. LRU picks its victims
inside the script (exact); saved-per-age ranks a snapshot of the sorted sets in
Python and deletes in that order, so its order may miss hits of the last few
milliseconds (approximate order, exact count).

An unreachable Redis costs a call at most ``timeout_s``; then calls fail at once
(:class:`CacheStoreError`) until a jittered, growing backoff lets one through.
The client makes no retries of its own. Any redis-py URL works: ``redis://``,
``rediss://`` (TLS), user and password, database number.

The Lua scripts live in ``redis_scripts``, the encoding of entries and replies in
``redis_codec``, the fail-fast outage gate in ``redis_outage``.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tierwise.cache.entry_columns import decode_vector
from tierwise.cache.entry_state import EntryUsage, EvictionOrder, EvictionPlan, FeedbackState
from tierwise.cache.errors import CacheStoreError
from tierwise.cache.redis_codec import (
    change_time,
    decode_entry,
    decode_refs,
    decode_text,
    encode_float,
    entry_fields,
    reply_pairs,
)
from tierwise.cache.redis_outage import RedisOutage
from tierwise.cache.redis_scripts import (
    BY_EXACT_KEY_SCRIPT,
    EVICT_SCRIPT,
    FEEDBACK_SCRIPT,
    INSERT_SCRIPT,
    POSITION_SCRIPT,
    SELECT_SCRIPT,
    TOUCH_SCRIPT,
)
from tierwise.cache.replication import Change, ChangeOp, FeedPosition, ReconnectBackoff
from tierwise.cache.settings import CacheSettings
from tierwise.cache.store import CacheEntry, EntryFilter, EntryRef, StoreIdentity, VectorRow

__all__ = ["RedisEntryStore"]

T = TypeVar("T")

_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisEntryStore:
    """:class:`tierwise.cache.store.EntryStore` and :class:`tierwise.cache.replication.ChangeFeed` over Redis.

    ``client`` serves the request path (short timeouts); ``reader`` serves the blocking reads of the
    change stream, so its socket timeout must exceed ``block_s``. Create it with :meth:`from_url`.
    """

    def __init__(
        self,
        client: Redis,
        reader: Redis,
        *,
        prefix: str = "tierwise:cache",
        stream_maxlen: int = 100_000,
        block_s: float = 1.0,
        backoff: ReconnectBackoff | None = None,
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"the Redis key prefix must be non-empty and without braces: {prefix!r}")
        self._client = client
        self._reader = reader
        self._keyspace = "{" + prefix + "}:"
        self._keys = [
            self._keyspace + name
            for name in ("meta", "changes", "refs", "z:created", "z:expires", "z:used", "z:saved")
        ]
        self._stream = self._keys[1]
        self._stream_maxlen = stream_maxlen
        self._block_ms = max(1, int(block_s * 1000))
        self.writer_id = uuid.uuid4().hex
        kwargs = client.connection_pool.connection_kwargs
        self.name = f"Redis at {kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        self._outage = RedisOutage(self.name, backoff or ReconnectBackoff(0.5, 5.0))
        self._closed = False
        self._insert = client.register_script(INSERT_SCRIPT)
        self._select = client.register_script(SELECT_SCRIPT)
        self._evict = client.register_script(EVICT_SCRIPT)
        self._touch = client.register_script(TOUCH_SCRIPT)
        self._feedback = client.register_script(FEEDBACK_SCRIPT)
        self._by_exact_key = client.register_script(BY_EXACT_KEY_SCRIPT)
        self._position = client.register_script(POSITION_SCRIPT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "tierwise:cache",
        timeout_s: float = 0.25,
        block_s: float = 1.0,
        stream_maxlen: int = 100_000,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 5.0,
    ) -> RedisEntryStore:
        """Connects lazily: a store made while Redis is down works once it is back."""
        no_retries = Retry(NoBackoff(), 0)
        client = Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=no_retries
        )
        reader = Redis.from_url(
            url,
            socket_timeout=block_s + max(timeout_s, 1.0),
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            client_name="tierwise-cache-follower",
        )
        return cls(
            client,
            reader,
            prefix=prefix,
            stream_maxlen=stream_maxlen,
            block_s=block_s,
            backoff=ReconnectBackoff(reconnect_min_s, reconnect_max_s),
        )

    @classmethod
    def for_cache(cls, url: str, settings: CacheSettings) -> RedisEntryStore:
        """The store as ``settings`` (the ``redis_*``, ``replication_*`` and ``reconnect_*`` keys) tune it."""
        return cls.from_url(
            url,
            prefix=settings.redis_prefix,
            timeout_s=settings.redis_timeout_s,
            block_s=settings.replication_block_s,
            stream_maxlen=settings.redis_stream_maxlen,
            reconnect_min_s=settings.reconnect_min_s,
            reconnect_max_s=settings.reconnect_max_s,
        )

    # -- plumbing ---------------------------------------------------------------------------------

    @property
    def reachable(self) -> bool:
        """False while calls fail fast after an error."""
        return not self._outage.down

    async def _call(self, work: Callable[[], Awaitable[T]]) -> T:
        if self._closed:
            raise CacheStoreError(f"the cache store {self.name} is closed")
        self._outage.check()
        try:
            result = await work()
        except _TRANSIENT as exc:
            self._outage.failed(exc)
            raise CacheStoreError(f"cache store {self.name}: {type(exc).__name__}: {exc}") from exc
        except RedisError as exc:
            raise CacheStoreError(f"cache store {self.name}: {type(exc).__name__}: {exc}") from exc
        self._outage.succeeded()
        return result

    async def _script(self, script: Any, *args: str | bytes | int) -> Any:
        argv = [self._keyspace, self._stream_maxlen, self.writer_id, uuid.uuid4().hex, *args]
        return await self._call(lambda: script(keys=self._keys, args=argv))

    def _entry_key(self, entry_id: str) -> str:
        return f"{self._keyspace}e:{entry_id}"

    # -- EntryStore --------------------------------------------------------------------------------

    async def insert(self, entry: CacheEntry) -> list[EntryRef]:
        fields: list[str | bytes] = []
        for name, value in entry_fields(entry).items():
            fields += [name, value]
        reply = await self._script(
            self._insert,
            entry.entry_id,
            entry.exact_key,
            entry.tenant,
            entry.partition_key,
            entry.embedder_key,
            max(1, math.ceil(entry.expires_at * 1000)),
            encode_float(entry.created_at),
            encode_float(entry.expires_at),
            encode_float(max(entry.created_at, entry.last_hit_at or entry.created_at)),
            encode_float(entry.saved),
            *fields,
        )
        return decode_refs(reply)

    async def get(self, entry_ids: Sequence[str]) -> dict[str, CacheEntry]:
        ids = list(dict.fromkeys(entry_ids))
        if not ids:
            return {}

        async def work() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for entry_id in ids:
                    pipe.hgetall(self._entry_key(entry_id))
                return list(await pipe.execute())

        replies = await self._call(work)
        return {
            entry_id: decode_entry(entry_id, fields)
            for entry_id, fields in zip(ids, replies, strict=True)
            if fields
        }

    async def get_by_exact_key(self, exact_key: str) -> CacheEntry | None:
        reply = await self._script(self._by_exact_key, exact_key)
        if not reply:
            return None
        return decode_entry(decode_text(reply[0]), reply_pairs(reply[1:]))

    async def _select_refs(self, mode: str, where: EntryFilter) -> list[EntryRef]:
        if where.is_empty:
            return []
        unset = ""
        reply = await self._script(
            self._select,
            mode,
            where.entry_id or unset,
            where.tenant or unset,
            where.partition_key or unset,
            unset if where.created_before is None else encode_float(where.created_before),
            unset if where.expires_before is None else encode_float(where.expires_before),
        )
        return decode_refs(reply)

    async def scan(self, where: EntryFilter) -> list[EntryRef]:
        return await self._select_refs("scan", where)

    async def delete(self, where: EntryFilter) -> list[EntryRef]:
        return await self._select_refs("delete", where)

    async def touch(self, usage: Sequence[EntryUsage]) -> None:
        args: list[str | int] = []
        for u in usage:
            last = "" if u.last_hit_at is None else encode_float(u.last_hit_at)
            args += [u.entry_id, u.hits, last, encode_float(u.saved)]
        if args:
            await self._script(self._touch, *args)

    async def add_feedback(
        self, entry_id: str, threshold_delta: float, negative_delta: int
    ) -> FeedbackState | None:
        reply = await self._script(self._feedback, entry_id, encode_float(threshold_delta), negative_delta)
        if not reply:
            return None
        return FeedbackState(float(reply[0]), int(reply[1]))

    async def evict(self, plan: EvictionPlan) -> list[EntryRef]:
        if plan.count <= 0:
            return []
        keep = -1 if plan.keep is None else plan.keep
        if plan.order is EvictionOrder.LRU:
            reply = await self._script(self._evict, plan.count, keep, "lru")
        else:
            ranked = await self._rank_saved_per_age(plan)
            # Spares cover candidates deleted by another replica since the ranking was read.
            reply = await self._script(
                self._evict, plan.count, keep, "listed", *ranked[: 2 * plan.count + 16]
            )
        return decode_refs(reply)

    async def _rank_saved_per_age(self, plan: EvictionPlan) -> list[str]:
        """Entry ids in the SQLite store's order: young last, then saved/(age+floor), last used, id."""

        async def work() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                for key in self._keys[3], self._keys[6], self._keys[5]:  # created, saved, used
                    pipe.zrange(key, 0, -1, withscores=True)
                return list(await pipe.execute())

        created, saved, used = (
            {decode_text(m): float(s) for m, s in reply} for reply in await self._call(work)
        )

        def rank(entry_id: str) -> tuple[bool, float, float, str]:
            born = created[entry_id]
            rate = saved.get(entry_id, 0.0) / (max(plan.now - born, 0.0) + plan.age_floor_s)
            return (born > plan.now - plan.grace_s, rate, used.get(entry_id, born), entry_id)

        return sorted(created, key=rank)

    async def count(self) -> int:
        return int(await self._call(lambda: self._client.hlen(self._keys[2])))

    async def iter_vectors(self, embedder_key: str, batch_size: int = 4096) -> AsyncIterator[list[VectorRow]]:
        # HSCAN returns every entry present for the whole scan at least once; duplicates are dropped.
        seen: set[str] = set()
        cursor = 0
        while True:

            async def work(scanned: int = cursor) -> tuple[int, dict[bytes, bytes]]:
                reply: Any = await self._client.hscan(self._keys[2], scanned, count=batch_size)
                return int(reply[0]), dict(reply[1])

            cursor, refs = await self._call(work)
            ids: list[str] = []
            for raw_id, raw_ref in refs.items():
                entry_id = decode_text(raw_id)
                if entry_id not in seen and json.loads(raw_ref)[1] == embedder_key:
                    seen.add(entry_id)
                    ids.append(entry_id)
            rows = await self.vectors(ids, embedder_key) if ids else []
            if rows:
                yield rows
            if cursor == 0:
                return

    async def identity(self) -> StoreIdentity:
        position = await self.position()
        return StoreIdentity(position.instance_id, position.seq)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._client.aclose()
        await self._reader.aclose()

    # -- ChangeFeed --------------------------------------------------------------------------------

    async def position(self) -> FeedPosition:
        reply = await self._script(self._position)
        return FeedPosition(decode_text(reply[0]), decode_text(reply[2]), int(reply[1]))

    async def read_changes(self, after: FeedPosition, count: int) -> list[Change]:
        if self._closed:
            raise CacheStoreError(f"the cache store {self.name} is closed")
        try:
            reply: Any = await self._reader.xread(
                {self._stream: after.change_id}, count=count, block=self._block_ms
            )
        except (RedisError, OSError) as exc:
            raise CacheStoreError(f"cache change feed {self.name}: {type(exc).__name__}: {exc}") from exc
        changes: list[Change] = []
        for _stream, events in reply or []:
            for raw_id, fields in events:
                change_id = decode_text(raw_id)
                try:
                    op = ChangeOp(decode_text(fields[b"op"]))
                    ref = EntryRef(
                        decode_text(fields[b"id"]), decode_text(fields[b"pk"]), decode_text(fields[b"ek"])
                    )
                    seq = int(fields[b"n"])
                except (KeyError, ValueError) as exc:
                    raise CacheStoreError(f"malformed change {change_id} in {self.name}: {exc!r}") from exc
                changes.append(
                    Change(
                        op,
                        ref,
                        FeedPosition(after.instance_id, change_id, seq),
                        change_time(change_id),
                        local=fields.get(b"w") == self.writer_id.encode(),
                    )
                )
        return changes

    async def vectors(self, entry_ids: Sequence[str], embedder_key: str) -> list[VectorRow]:
        names = ("partition_key", "embedder_key", "dim", "embedding")

        async def work() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for entry_id in entry_ids:
                    pipe.hmget(self._entry_key(entry_id), names)
                return list(await pipe.execute())

        rows: list[VectorRow] = []
        for entry_id, (partition, embedder, dim, blob) in zip(entry_ids, await self._call(work), strict=True):
            if partition is None or embedder is None or dim is None or blob is None:
                continue  # deleted or expired since
            if decode_text(embedder) == embedder_key:
                rows.append(VectorRow(entry_id, decode_text(partition), decode_vector(blob, int(dim))))
        return rows
