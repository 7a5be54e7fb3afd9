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
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tierwise.cache.replication import Backoff, Change, ChangeOp, FeedPosition
from tierwise.cache.settings import CacheSettings
from tierwise.cache.store import (
    CachedResponse,
    CacheEntry,
    CacheStoreError,
    EntryFilter,
    EntryRef,
    EntryUsage,
    EvictionOrder,
    EvictionPlan,
    FeedbackState,
    StoreIdentity,
    VectorRow,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Every script gets the fixed keys below as KEYS and ARGV[1..4] = key prefix, stream length, writer id,
# and an instance id to adopt if the store has none yet (a fresh or flushed Redis).
_PRELUDE = """
local META, STREAM, REFS, CREATED, EXPIRES, USED, SAVED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local P, MAXLEN, WRITER, INSTANCE = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local function emit(op, id, pk, ek)
  redis.call('HSETNX', META, 'instance_id', INSTANCE)
  local n = redis.call('HINCRBY', META, 'events', 1)
  redis.call('XADD', STREAM, 'MAXLEN', '~', MAXLEN, '*', 'op', op, 'id', id, 'pk', pk, 'ek', ek, 'n', n, 'w', WRITER)
end

local function ref_of(id)
  local raw = redis.call('HGET', REFS, id)
  if raw then return cjson.decode(raw) end
  return nil
end

-- Remove an entry from every key and announce it; appends id, partition, embedder to out.
local function remove(id, out)
  local ref = ref_of(id)
  if not ref then return false end
  redis.call('HDEL', REFS, id)
  for _, z in ipairs({CREATED, EXPIRES, USED, SAVED}) do redis.call('ZREM', z, id) end
  redis.call('SREM', P .. 'p:' .. ref[1], id)
  redis.call('SREM', P .. 't:' .. ref[3], id)
  redis.call('DEL', P .. 'e:' .. id)
  local xkey = P .. 'x:' .. ref[4]
  if redis.call('GET', xkey) == id then redis.call('DEL', xkey) end
  emit('del', id, ref[1], ref[2])
  out[#out + 1] = id
  out[#out + 1] = ref[1]
  out[#out + 1] = ref[2]
  return true
end
"""

# ARGV[5..]: id, exact key, tenant, partition, embedder, expiry ms, created_at, expires_at, last used,
# saved, then the entry hash's field/value pairs. Returns the replaced entries as id/partition/embedder.
_INSERT = (
    _PRELUDE
    + """
local id, exact, tenant, pk, ek = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local exp_ms = tonumber(ARGV[10])
local out = {}
local xkey = P .. 'x:' .. exact
local old = redis.call('GET', xkey)
if old then remove(old, out) end
local ekey = P .. 'e:' .. id
local fields = {}
for i = 15, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', ekey, unpack(fields))
redis.call('PEXPIREAT', ekey, ARGV[10])
redis.call('SET', xkey, id, 'PXAT', ARGV[10])
redis.call('HSET', REFS, id, cjson.encode({pk, ek, tenant, exact}))
redis.call('ZADD', CREATED, ARGV[11], id)
redis.call('ZADD', EXPIRES, ARGV[12], id)
redis.call('ZADD', USED, ARGV[13], id)
redis.call('ZADD', SAVED, ARGV[14], id)
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
for _, members in ipairs({P .. 't:' .. tenant, P .. 'p:' .. pk}) do
  redis.call('SADD', members, id)
  local ttl = redis.call('PTTL', members)
  if ttl == -1 or now_ms + ttl < exp_ms then redis.call('PEXPIREAT', members, ARGV[10]) end
end
emit('add', id, pk, ek)
return out
"""
)

# ARGV[5..]: mode ('scan' or 'delete'), entry id, tenant, partition, created before, expires before;
# '' is unset. Returns id/partition/embedder triples.
_SELECT = (
    _PRELUDE
    + """
local mode, entry_id, tenant, pk, created_before, expires_before = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local candidates, members
if entry_id ~= '' then
  candidates = {entry_id}
elseif pk ~= '' then
  members = P .. 'p:' .. pk
  candidates = redis.call('SMEMBERS', members)
elseif tenant ~= '' then
  members = P .. 't:' .. tenant
  candidates = redis.call('SMEMBERS', members)
elseif expires_before ~= '' then
  candidates = redis.call('ZRANGEBYSCORE', EXPIRES, '-inf', expires_before)
else
  candidates = redis.call('ZRANGEBYSCORE', CREATED, '-inf', '(' .. created_before)
end
local out = {}
for _, id in ipairs(candidates) do
  local ref = ref_of(id)
  if not ref then
    if members and mode == 'delete' then redis.call('SREM', members, id) end
  elseif (pk == '' or ref[1] == pk) and (tenant == '' or ref[3] == tenant)
      and (created_before == '' or tonumber(redis.call('ZSCORE', CREATED, id)) < tonumber(created_before))
      and (expires_before == '' or tonumber(redis.call('ZSCORE', EXPIRES, id)) <= tonumber(expires_before)) then
    if mode == 'delete' then
      remove(id, out)
    else
      out[#out + 1] = id
      out[#out + 1] = ref[1]
      out[#out + 1] = ref[2]
    end
  end
end
return out
"""
)

# ARGV[5..]: count, keep (-1: none), then the candidates in eviction order ('lru': take them from z:used).
_EVICT = (
    _PRELUDE
    + """
local n = tonumber(ARGV[5])
local keep = tonumber(ARGV[6])
if keep >= 0 then n = math.min(n, redis.call('HLEN', REFS) - keep) end
local out = {}
if n <= 0 then return out end
local candidates = {}
if ARGV[7] == 'lru' then
  candidates = redis.call('ZRANGE', USED, 0, n - 1)
else
  for i = 8, #ARGV do candidates[#candidates + 1] = ARGV[i] end
end
local removed = 0
for _, id in ipairs(candidates) do
  if removed >= n then break end
  if remove(id, out) then removed = removed + 1 end
end
return out
"""
)

# ARGV[5..]: per entry: id, hits, last hit ('' none), saved.
_TOUCH = (
    _PRELUDE
    + """
for i = 5, #ARGV, 4 do
  local id, hits, last, saved = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  local ekey = P .. 'e:' .. id
  if redis.call('EXISTS', ekey) == 1 then
    if hits ~= 0 then redis.call('HINCRBY', ekey, 'hits', hits) end
    if last ~= '' then
      local current = redis.call('HGET', ekey, 'last_hit_at')
      if not current or current == '' or tonumber(last) > tonumber(current) then
        redis.call('HSET', ekey, 'last_hit_at', last)
      end
      redis.call('ZADD', USED, 'GT', last, id)
    end
    if saved ~= 0 then
      redis.call('HINCRBYFLOAT', ekey, 'saved', ARGV[i + 3])
      redis.call('ZINCRBY', SAVED, ARGV[i + 3], id)
    end
  end
end
return 0
"""
)

# ARGV[5..]: id, threshold delta, negative delta. Returns {threshold, negatives} or false.
_FEEDBACK = (
    _PRELUDE
    + """
local ekey = P .. 'e:' .. ARGV[5]
if redis.call('EXISTS', ekey) == 0 then return false end
local threshold = redis.call('HINCRBYFLOAT', ekey, 'threshold_adjust', ARGV[6])
local negatives = redis.call('HINCRBY', ekey, 'negative_feedback', ARGV[7])
return {threshold, negatives}
"""
)

# ARGV[5]: exact key. Returns {id, field, value, ...} or false.
_BY_EXACT_KEY = (
    _PRELUDE
    + """
local id = redis.call('GET', P .. 'x:' .. ARGV[5])
if not id then return false end
local fields = redis.call('HGETALL', P .. 'e:' .. id)
if #fields == 0 then return false end
table.insert(fields, 1, id)
return fields
"""
)

# Returns {instance id, changes appended, id of the last change or '0-0'}.
_POSITION = (
    _PRELUDE
    + """
redis.call('HSETNX', META, 'instance_id', INSTANCE)
local values = redis.call('HMGET', META, 'instance_id', 'events')
local last = redis.call('XREVRANGE', STREAM, '+', '-', 'COUNT', 1)
local change_id = '0-0'
if #last > 0 then change_id = last[1][1] end
return {values[1], values[2] or '0', change_id}
"""
)

_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)


def _float(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value}")
    return repr(float(value))


def _text(value: bytes) -> str:
    return value.decode("utf-8")


def _entry_fields(entry: CacheEntry) -> dict[str, bytes | str]:
    response = entry.response
    return {
        "partition_key": entry.partition_key,
        "tenant": entry.tenant,
        "namespace": entry.namespace,
        "exact_key": entry.exact_key,
        "query_text": entry.query_text,
        "embedder_key": entry.embedder_key,
        "dim": str(int(entry.embedding.shape[0])),
        "embedding": np.ascontiguousarray(entry.embedding, dtype="<f4").tobytes(),
        "content": response.content,
        "finish_reason": response.finish_reason,
        "model": response.model,
        "input_tokens": str(response.input_tokens),
        "output_tokens": str(response.output_tokens),
        "created_at": _float(entry.created_at),
        "expires_at": _float(entry.expires_at),
        "hits": str(entry.hits),
        "last_hit_at": "" if entry.last_hit_at is None else _float(entry.last_hit_at),
        "threshold_adjust": _float(entry.threshold_adjust),
        "negative_feedback": str(entry.negative_feedback),
        "saved": _float(entry.saved),
    }


def _vector(blob: bytes, dim: int) -> np.ndarray:
    if len(blob) != 4 * dim:
        raise CacheStoreError(f"stored embedding has {len(blob)} bytes, expected {4 * dim}")
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def _entry(entry_id: str, fields: dict[bytes, bytes]) -> CacheEntry:
    def text(name: str) -> str:
        return _text(fields[name.encode()])

    try:
        last_hit = text("last_hit_at")
        return CacheEntry(
            entry_id=entry_id,
            partition_key=text("partition_key"),
            tenant=text("tenant"),
            namespace=text("namespace"),
            exact_key=text("exact_key"),
            query_text=text("query_text"),
            embedder_key=text("embedder_key"),
            embedding=_vector(fields[b"embedding"], int(text("dim"))),
            response=CachedResponse(
                content=text("content"),
                finish_reason=text("finish_reason"),
                model=text("model"),
                input_tokens=int(text("input_tokens")),
                output_tokens=int(text("output_tokens")),
            ),
            created_at=float(text("created_at")),
            expires_at=float(text("expires_at")),
            hits=int(text("hits")),
            last_hit_at=float(last_hit) if last_hit else None,
            threshold_adjust=float(text("threshold_adjust")),
            negative_feedback=int(text("negative_feedback")),
            saved=float(text("saved")),
        )
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise CacheStoreError(f"cache entry {entry_id} in Redis is malformed: {exc!r}") from exc


def _refs(reply: Any) -> list[EntryRef]:
    values = [_text(value) for value in reply or []]
    return [EntryRef(values[i], values[i + 1], values[i + 2]) for i in range(0, len(values), 3)]


def _pairs(reply: Sequence[bytes]) -> dict[bytes, bytes]:
    return {reply[i]: reply[i + 1] for i in range(0, len(reply), 2)}


def _change_time(change_id: str) -> float:
    return int(change_id.split("-", 1)[0]) / 1000.0


class _Outage:
    """Fails calls fast while Redis is unreachable, letting one through per backoff step."""

    def __init__(self, name: str, backoff: Backoff, clock: Callable[[], float] = time.monotonic) -> None:
        self._name = name
        self._backoff = backoff
        self._clock = clock
        self._since: float | None = None
        self._retry_at = 0.0

    @property
    def down(self) -> bool:
        return self._since is not None

    def check(self) -> None:
        now = self._clock()
        if self._since is not None and now < self._retry_at:
            raise CacheStoreError(
                f"cache store {self._name} unreachable for {now - self._since:.1f} s; "
                f"next attempt in {self._retry_at - now:.1f} s"
            )

    def failed(self, exc: BaseException) -> None:
        now = self._clock()
        if now < self._retry_at:
            return  # a call that started before the outage was noticed: not another probe
        if self._since is None:
            self._since = now
            logger.warning("cache store %s unreachable (%s); retrying with backoff", self._name, exc)
        self._retry_at = now + self._backoff.next_delay()

    def succeeded(self) -> None:
        if self._since is not None:
            logger.info(
                "cache store %s reachable again after %.1f s", self._name, self._clock() - self._since
            )
            self._since = None
            self._retry_at = 0.0
            self._backoff.reset()


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
        backoff: Backoff | None = None,
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
        self._outage = _Outage(self.name, backoff or Backoff(0.5, 5.0))
        self._closed = False
        self._insert = client.register_script(_INSERT)
        self._select = client.register_script(_SELECT)
        self._evict = client.register_script(_EVICT)
        self._touch = client.register_script(_TOUCH)
        self._feedback = client.register_script(_FEEDBACK)
        self._by_exact_key = client.register_script(_BY_EXACT_KEY)
        self._position = client.register_script(_POSITION)

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
            backoff=Backoff(reconnect_min_s, reconnect_max_s),
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
        for name, value in _entry_fields(entry).items():
            fields += [name, value]
        reply = await self._script(
            self._insert,
            entry.entry_id,
            entry.exact_key,
            entry.tenant,
            entry.partition_key,
            entry.embedder_key,
            max(1, math.ceil(entry.expires_at * 1000)),
            _float(entry.created_at),
            _float(entry.expires_at),
            _float(max(entry.created_at, entry.last_hit_at or entry.created_at)),
            _float(entry.saved),
            *fields,
        )
        return _refs(reply)

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
            entry_id: _entry(entry_id, fields)
            for entry_id, fields in zip(ids, replies, strict=True)
            if fields
        }

    async def get_by_exact_key(self, exact_key: str) -> CacheEntry | None:
        reply = await self._script(self._by_exact_key, exact_key)
        if not reply:
            return None
        return _entry(_text(reply[0]), _pairs(reply[1:]))

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
            unset if where.created_before is None else _float(where.created_before),
            unset if where.expires_before is None else _float(where.expires_before),
        )
        return _refs(reply)

    async def scan(self, where: EntryFilter) -> list[EntryRef]:
        return await self._select_refs("scan", where)

    async def delete(self, where: EntryFilter) -> list[EntryRef]:
        return await self._select_refs("delete", where)

    async def touch(self, usage: Sequence[EntryUsage]) -> None:
        args: list[str | int] = []
        for u in usage:
            last = "" if u.last_hit_at is None else _float(u.last_hit_at)
            args += [u.entry_id, u.hits, last, _float(u.saved)]
        if args:
            await self._script(self._touch, *args)

    async def add_feedback(
        self, entry_id: str, threshold_delta: float, negative_delta: int
    ) -> FeedbackState | None:
        reply = await self._script(self._feedback, entry_id, _float(threshold_delta), negative_delta)
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
        return _refs(reply)

    async def _rank_saved_per_age(self, plan: EvictionPlan) -> list[str]:
        """Entry ids in the SQLite store's order: young last, then saved/(age+floor), last used, id."""

        async def work() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                for key in self._keys[3], self._keys[6], self._keys[5]:  # created, saved, used
                    pipe.zrange(key, 0, -1, withscores=True)
                return list(await pipe.execute())

        created, saved, used = ({_text(m): float(s) for m, s in reply} for reply in await self._call(work))

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
                entry_id = _text(raw_id)
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
        return FeedPosition(_text(reply[0]), _text(reply[2]), int(reply[1]))

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
                change_id = _text(raw_id)
                try:
                    op = ChangeOp(_text(fields[b"op"]))
                    ref = EntryRef(_text(fields[b"id"]), _text(fields[b"pk"]), _text(fields[b"ek"]))
                    seq = int(fields[b"n"])
                except (KeyError, ValueError) as exc:
                    raise CacheStoreError(f"malformed change {change_id} in {self.name}: {exc!r}") from exc
                changes.append(
                    Change(
                        op,
                        ref,
                        FeedPosition(after.instance_id, change_id, seq),
                        _change_time(change_id),
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
            if _text(embedder) == embedder_key:
                rows.append(VectorRow(entry_id, _text(partition), _vector(blob, int(dim))))
        return rows
