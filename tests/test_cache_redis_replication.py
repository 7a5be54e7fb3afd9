"""Several SemanticCache replicas on one real redis-server: each one's inserts and deletions reach the
others' FAISS indexes through the change stream, outages cost misses and never exceptions, and a
replica that fell behind or started late builds its index from Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from tests.redis_server import RedisServer, redis_server_factory
from tests.test_cache_redis_store import until
from tierwise.cache.embedder import EmbedderInfo
from tierwise.cache.errors import CacheStoreError
from tierwise.cache.redis_store import RedisEntryStore
from tierwise.cache.replication import (
    Change,
    ChangeFeed,
    ChangeOp,
    FeedPosition,
    ReconnectBackoff,
    net_changes,
)
from tierwise.cache.semantic_cache import CacheQuery, HitKind, SemanticCache
from tierwise.cache.settings import CacheSettings
from tierwise.cache.store import CachedResponse, EntryRef, VectorRow

__all__ = ["redis_server_factory"]

INFO = EmbedderInfo("synthetic", 32)
SETTINGS = CacheSettings(
    similarity_threshold=0.99,
    redis_timeout_s=2.0,  # a loaded test machine must not look like an outage
    replication_block_s=0.2,
    reconnect_min_s=0.05,
    reconnect_max_s=0.3,
)
_RNG = np.random.default_rng(7)
VECTORS = [v / np.linalg.norm(v) for v in _RNG.standard_normal((64, 32)).astype(np.float32)]


def query(i: int, tenant: str = "acme") -> CacheQuery:
    return CacheQuery.create(
        tenant=tenant, namespace="support", messages=[("user", f"question {i}")], embedding=VECTORS[i]
    )


def paraphrase(i: int, tenant: str = "acme") -> CacheQuery:
    """Another text with the same vector: only the semantic tier (the FAISS index) can answer it."""
    base = query(i, tenant)
    return CacheQuery(base.partition, (("user", f"question {i}?"),), f"question {i}?", VECTORS[i])


def answer(i: int) -> CachedResponse:
    return CachedResponse(f"answer {i}", "stop", "small-model", 10, 20)


class Replicas:
    """Opens caches on one Redis (each with its own store object, as separate processes would) and closes
    them all at the end."""

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        self.opened: list[SemanticCache] = []

    async def open(
        self,
        info: EmbedderInfo = INFO,
        feed: Callable[[RedisEntryStore], ChangeFeed] | None = None,
        **changes: Any,
    ) -> SemanticCache:
        settings = SETTINGS.model_copy(update=changes)
        store = RedisEntryStore.for_cache(self.redis.url, settings)
        cache = await SemanticCache.open(store, info, settings, feed=None if feed is None else feed(store))
        self.opened.append(cache)
        return cache

    async def aclose(self) -> None:
        for cache in self.opened:
            await cache.aclose()


@pytest.fixture
def redis(redis_server_factory: Callable[[], RedisServer]) -> RedisServer:
    return redis_server_factory()


@pytest_asyncio.fixture
async def replicas(redis: RedisServer) -> AsyncIterator[Replicas]:
    opened = Replicas(redis)
    yield opened
    await opened.aclose()


async def semantic_hit(cache: SemanticCache, i: int, tenant: str = "acme") -> bool:
    hit = await cache.lookup(paraphrase(i, tenant))
    return hit is not None and hit.kind is HitKind.SEMANTIC and hit.response == answer(i)


async def hits_all(cache: SemanticCache, indices: Sequence[int]) -> bool:
    return all([await semantic_hit(cache, i) for i in indices])


def holds(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check


async def insert(cache: SemanticCache, i: int, tenant: str = "acme") -> str:
    entry_id = await cache.insert(query(i, tenant), answer(i))
    assert entry_id is not None
    return entry_id


async def insert_once_reachable(cache: SemanticCache, i: int) -> None:
    """Insert, retrying while the store is still in its reconnect backoff (inserts store nothing then)."""

    async def stored() -> bool:
        return await cache.insert(query(i), answer(i)) is not None

    await until(stored)


# -- the shared cache --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_answer_cached_through_one_replica_hits_on_another(replicas: Replicas) -> None:
    a, b = await replicas.open(), await replicas.open()
    assert await b.lookup(paraphrase(0)) is None
    entry_id = await insert(a, 0)
    # The exact tier reads Redis directly; the semantic tier waits for B's index to follow the stream.
    exact = await b.lookup(query(0))
    assert exact is not None and exact.kind is HitKind.EXACT and exact.entry_id == entry_id
    await until(lambda: semantic_hit(b, 0), timeout_s=5.0)
    await until(holds(lambda: a.stats().replicated_changes >= 1))  # A re-read its own change
    for cache in (a, b):
        stats = cache.stats()
        assert (stats.entries, stats.indexed_vectors) == (1, 1)  # A's own insert counted once
        assert stats.replication_following and stats.replication_lag_s is not None
    # B's hits (one exact, one semantic) are counted on the shared entry.
    await b.aclose()
    reader = RedisEntryStore.for_cache(replicas.redis.url, SETTINGS)
    try:
        assert (await reader.get([entry_id]))[entry_id].hits == 2
    finally:
        await reader.aclose()


@pytest.mark.asyncio
async def test_deletions_reach_every_replica_index(replicas: Replicas) -> None:
    a = await replicas.open(capacity=4, eviction_headroom=0.0)
    b = await replicas.open()
    for i in range(3):
        await insert(a, i)
    await insert(a, 3, tenant="globex")
    await until(lambda: hits_all(b, range(3)))
    await until(lambda: semantic_hit(b, 3, "globex"))

    # Invalidation through B empties A's index too (not only the store: A's FAISS has no vector left).
    assert await b.invalidate(tenant="acme") == 3
    await until(holds(lambda: a.stats().indexed_vectors == 1))
    assert not await semantic_hit(a, 0)

    # Three negative feedbacks through A delete the entry; B's index follows.
    hit = await b.lookup(paraphrase(3, "globex"))
    assert hit is not None
    for _ in range(SETTINGS.exact_block_after_negatives):
        assert await a.record_feedback(hit.entry_id, 0.0)
    await until(holds(lambda: b.stats().indexed_vectors == 0))

    # Capacity eviction on A (capacity 4) reaches B.
    for i in range(10, 15):
        await insert(a, i)
    assert a.stats().evicted == 1
    await until(holds(lambda: b.stats().indexed_vectors == 4))
    await until(lambda: hits_all(b, range(11, 15)))
    assert not await semantic_hit(b, 10)  # the least recently used went, everywhere


@pytest.mark.asyncio
async def test_a_replica_started_later_builds_its_index_from_redis(replicas: Replicas) -> None:
    a = await replicas.open()
    for i in range(5):
        await insert(a, i)
    c = await replicas.open()
    stats = c.stats()
    assert (stats.indexed_vectors, stats.entries, stats.index_from_snapshot) == (5, 5, False)
    assert await hits_all(c, range(5))  # at once: the index was built from a scan of the entries


@pytest.mark.asyncio
async def test_another_embedder_never_indexes_these_vectors(replicas: Replicas) -> None:
    a = await replicas.open()
    other = await replicas.open(info=EmbedderInfo("another-model", 32))
    await insert(a, 0)
    await until(holds(lambda: other.stats().replicated_changes >= 1))
    assert other.stats().indexed_vectors == 0
    assert await other.lookup(paraphrase(0)) is None
    hit = await other.lookup(query(0))
    assert hit is not None and hit.kind is HitKind.EXACT  # the exact tier compares no vectors
    late = await replicas.open(info=EmbedderInfo("another-model", 32))
    assert late.stats().indexed_vectors == 0


# -- outages -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_redis_killed_costs_misses_then_replicas_catch_up(
    replicas: Replicas, redis: RedisServer
) -> None:
    a, b = await replicas.open(), await replicas.open()
    await insert(a, 0)
    await until(lambda: semantic_hit(b, 0))

    redis.kill()
    assert await b.lookup(query(0)) is None  # neither raises nor serves
    assert await b.lookup(paraphrase(0)) is None
    assert await a.insert(query(1), answer(1)) is None
    assert a.stats().store_errors >= 1 and b.stats().store_errors >= 1
    await until(holds(lambda: not b.stats().replication_following))

    redis.restart()  # same port, empty: the entries written before are gone
    await insert_once_reachable(a, 2)
    await until(lambda: semantic_hit(b, 2))
    # B noticed the new Redis and rebuilt from it: the lost entry left its index too.
    stats = b.stats()
    assert stats.index_reloads >= 1 and stats.indexed_vectors == 1 and stats.replication_errors >= 1
    assert not await semantic_hit(b, 0)


@pytest.mark.asyncio
async def test_a_replica_opens_while_redis_is_down_and_follows_once_it_is_back(
    replicas: Replicas, redis: RedisServer
) -> None:
    a = await replicas.open()
    await insert(a, 0)
    redis.kill()
    late = await replicas.open()
    assert late.stats().indexed_vectors == 0
    assert await late.lookup(paraphrase(0)) is None
    redis.restart()
    await until(holds(lambda: late.stats().index_reloads >= 1))
    await insert_once_reachable(a, 1)
    await until(lambda: semantic_hit(late, 1))


class GatedFeed:
    """The real Redis feed, except that reads fail while the gate is shut (a replica cut off from Redis
    while the others go on writing)."""

    def __init__(self, store: RedisEntryStore) -> None:
        self.store = store
        self.open = True

    def _check(self) -> None:
        if not self.open:
            raise CacheStoreError("cut off by the test")

    async def position(self) -> FeedPosition:
        self._check()
        return await self.store.position()

    async def read_changes(self, after: FeedPosition, count: int) -> list[Change]:
        self._check()
        return await self.store.read_changes(after, count)

    async def vectors(self, entry_ids: Sequence[str], embedder_key: str) -> list[VectorRow]:
        self._check()
        return await self.store.vectors(entry_ids, embedder_key)


@pytest.mark.asyncio
async def test_a_cut_off_replica_resumes_from_its_last_change(replicas: Replicas) -> None:
    gates: list[GatedFeed] = []

    def gated(store: RedisEntryStore) -> GatedFeed:
        gates.append(GatedFeed(store))
        return gates[-1]

    a, b = await replicas.open(), await replicas.open(feed=gated)
    await insert(a, 0)
    await until(lambda: semantic_hit(b, 0))
    gates[0].open = False
    await until(holds(lambda: b.stats().replication_errors >= 1))
    for i in range(1, 4):
        await insert(a, i)
    assert not await semantic_hit(b, 1)
    gates[0].open = True
    await until(lambda: hits_all(b, range(4)))
    assert b.stats().index_reloads == 0  # replayed from where it stopped, no rebuild


@pytest.mark.asyncio
async def test_a_replica_behind_a_trimmed_stream_rebuilds_its_index(
    replicas: Replicas, redis: RedisServer
) -> None:
    admin = Redis.from_url(redis.url)
    await admin.config_set("stream-node-max-entries", "2")  # so that approximate trimming bites at once
    await admin.aclose()
    gates: list[GatedFeed] = []

    def gated(store: RedisEntryStore) -> GatedFeed:
        gates.append(GatedFeed(store))
        return gates[-1]

    a = await replicas.open(redis_stream_maxlen=4)
    b = await replicas.open(feed=gated, redis_stream_maxlen=4)
    await insert(a, 0)
    await until(lambda: semantic_hit(b, 0))
    gates[0].open = False
    for i in range(1, 20):
        await insert(a, i)
    await a.invalidate(entry_id=(await a.lookup(query(0))).entry_id)  # type: ignore[union-attr]
    gates[0].open = True
    await until(lambda: hits_all(b, range(1, 20)))
    stats = b.stats()
    assert stats.index_reloads == 1 and stats.indexed_vectors == 19


@pytest.mark.asyncio
async def test_a_replica_snapshot_resumes_from_the_position_it_recorded(
    replicas: Replicas, redis: RedisServer, tmp_path: Path
) -> None:
    snapshot = tmp_path / "replica.faiss"
    a = await replicas.open()
    b = await replicas.open(snapshot_path=snapshot)
    first = await insert(a, 0)
    await until(lambda: semantic_hit(b, 0))
    await b.aclose()  # writes the snapshot with the feed position its index matches

    await insert(a, 1)
    await a.invalidate(entry_id=first)
    b = await replicas.open(snapshot_path=snapshot)
    assert b.stats().index_from_snapshot
    await until(lambda: semantic_hit(b, 1))
    await until(holds(lambda: b.stats().indexed_vectors == 1))  # the invalidation was replayed
    assert b.stats().index_reloads == 0
    await b.aclose()

    redis.restart()  # a new, empty Redis: the snapshot belongs to the old one and is not trusted
    b = await replicas.open(snapshot_path=snapshot)
    assert not b.stats().index_from_snapshot and b.stats().indexed_vectors == 0


# -- pieces ------------------------------------------------------------------------------------------


def test_backoff_grows_with_equal_jitter_up_to_its_cap() -> None:
    low, high = ReconnectBackoff(0.5, 4.0, rng=lambda: 0.0), ReconnectBackoff(0.5, 4.0, rng=lambda: 1.0)
    assert [low.next_delay() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [high.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    high.reset()
    assert high.next_delay() == 0.5
    with pytest.raises(ValueError):
        ReconnectBackoff(2.0, 1.0)


def test_a_batch_of_changes_applies_its_net_effect() -> None:
    def change(op: ChangeOp, entry_id: str, seq: int) -> Change:
        return Change(op, EntryRef(entry_id, "p", "e"), FeedPosition("i", f"{seq}-0", seq), 0.0, local=False)

    batch = [change(ChangeOp.ADD, "x", 1), change(ChangeOp.ADD, "y", 2), change(ChangeOp.REMOVE, "x", 3)]
    adds, removes = net_changes(batch)
    assert [c.ref.entry_id for c in adds] == ["y"] and [c.ref.entry_id for c in removes] == ["x"]
