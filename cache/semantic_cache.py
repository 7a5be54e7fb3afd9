"""The cache's public facade: exact and semantic lookup, insert, invalidation, feedback.

A lookup tries the exact key first (same partition, same normalised messages),
then the nearest neighbours of the query's embedding inside its partition; a
neighbour is served only when its cosine reaches the threshold (raised per entry
by negative feedback) and the verifier accepts the pair. The caller computes the
query's embedding once (``BatchingEmbedder`` over ``embedding_text``) and passes
it in; the cache never embeds.

The store is the source of truth; the FAISS index is rebuilt from it on open
unless a snapshot taken at the store's current generation is found. Writes (the
store write and the matching index change) are serialised, so a snapshot always
matches the generation it records. Hit and savings counters are written in
batches off the request path.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from cache.embedder import EmbedderInfo, Vector
from cache.index import PartitionedIndex, set_faiss_threads
from cache.partition import GenerationParams, Message, Partition, build_partition, exact_key, last_user_turn
from cache.settings import CacheSettings
from cache.store import (
    CachedResponse,
    CacheEntry,
    EntryFilter,
    EntryRef,
    EntryStore,
    EntryUsage,
    EvictionPlan,
    entry_label,
    label_entry_id,
    new_entry_id,
)
from cache.verification import CandidateVerifier, CosineOnlyVerifier

logger = logging.getLogger(__name__)

T = TypeVar("T")
_BLOCKED_THRESHOLD = 1.0 - 1e-6  # a required cosine this high means "never semantically"


class HitKind(enum.Enum):
    EXACT = "exact"
    SEMANTIC = "semantic"


@dataclass(frozen=True, slots=True)
class CacheQuery:
    """One request as the cache sees it; build it with :meth:`create` so partition and messages agree."""

    partition: Partition
    messages: tuple[Message, ...]
    query_text: str
    embedding: Vector
    max_age_s: float | None = None

    @classmethod
    def create(
        cls,
        *,
        tenant: str,
        namespace: str,
        messages: Sequence[Message],
        embedding: Vector,
        params: GenerationParams | None = None,
        tools_json: str = "",
        max_age_s: float | None = None,
    ) -> CacheQuery:
        """``embedding`` must be of ``embedding_text(last_user_turn(messages))``."""
        messages = tuple((str(role), str(content)) for role, content in messages)
        partition = build_partition(tenant, namespace, messages, params, tools_json)
        return cls(partition, messages, last_user_turn(messages), embedding, max_age_s)

    @property
    def exact_key(self) -> str:
        return exact_key(self.partition, self.messages)


@dataclass(frozen=True, slots=True)
class CacheHit:
    entry_id: str
    kind: HitKind
    similarity: float
    verifier_score: float
    verifier_reason: str
    age_s: float
    response: CachedResponse


@dataclass(slots=True)
class CacheStats:
    """Counters since this cache was opened; ``entries`` is approximate between evictions."""

    entries: int = 0
    indexed_vectors: int = 0
    partitions: int = 0
    hnsw_partitions: int = 0
    index_from_snapshot: bool = False
    lookups: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    verifier_rejections: int = 0
    verifier_errors: int = 0
    inserts: int = 0
    refused_inserts: int = 0
    evicted: int = 0
    expired: int = 0
    invalidated: int = 0
    negative_feedback: int = 0
    background_errors: int = 0


@dataclass(slots=True)
class _Usage:
    hits: int = 0
    last_hit_at: float | None = None
    saved: float = 0.0


@dataclass(slots=True)
class _Background:
    """Tasks the cache started and must finish before it closes."""

    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    errors: int = 0

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors += 1
            logger.error("cache background task %s failed", task.get_name(), exc_info=task.exception())

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


class CacheClosed(RuntimeError):
    """The cache was used after ``aclose()``."""


class SemanticCache:
    """Create with :meth:`open`; the cache owns the store from then on and closes it in :meth:`aclose`."""

    def __init__(
        self,
        store: EntryStore,
        embedder: EmbedderInfo,
        index: PartitionedIndex,
        settings: CacheSettings,
        verifier: CandidateVerifier,
        clock: Callable[[], float],
        entries: int,
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._index = index
        self._settings = settings
        self._verifier = verifier
        self._clock = clock
        self._write_lock = asyncio.Lock()
        # OpenMP settings are per thread, so each index thread sets its own on start.
        self._index_threads = ThreadPoolExecutor(
            max_workers=2,
            thread_name_prefix="tierwise-index",
            initializer=set_faiss_threads,
            initargs=(settings.faiss_search_threads,),
        )
        self._build_thread = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="tierwise-index-build",
            initializer=set_faiss_threads,
            initargs=(settings.faiss_build_threads,),
        )
        self._background = _Background()
        self._rebuilding: set[str] = set()
        self._usage: dict[str, _Usage] = {}
        self._last_flush = clock()
        self._last_purge = clock()
        self._stats = CacheStats(entries=entries)
        self._closed = False

    @classmethod
    async def open(
        cls,
        store: EntryStore,
        embedder: EmbedderInfo,
        settings: CacheSettings | None = None,
        verifier: CandidateVerifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> SemanticCache:
        """Load the index from a current snapshot or rebuild it from ``store``; purge expired entries."""
        settings = settings or CacheSettings()
        verifier = verifier or CosineOnlyVerifier(settings.similarity_threshold)
        index, from_snapshot = await _load_or_rebuild_index(store, embedder, settings)
        cache = cls(store, embedder, index, settings, verifier, clock, await store.count())
        cache._stats.index_from_snapshot = from_snapshot
        await cache._purge_expired()
        return cache

    # -- lookup ---------------------------------------------------------------------------------------

    async def lookup(self, query: CacheQuery) -> CacheHit | None:
        """The stored answer for ``query``: exact match first, then a verified semantic neighbour."""
        self._check_open()
        now = self._clock()
        self._stats.lookups += 1
        self._maybe_purge(now)
        hit = await self._exact_hit(query, now)
        if hit is None and query.query_text.strip():
            hit = await self._semantic_hit(query, now)
        if hit is None:
            self._stats.misses += 1
            return None
        if hit.kind is HitKind.EXACT:
            self._stats.exact_hits += 1
        else:
            self._stats.semantic_hits += 1
        self._note_usage(hit.entry_id, _Usage(hits=1, last_hit_at=now))
        return hit

    def _servable(self, entry: CacheEntry, query: CacheQuery, now: float) -> bool:
        if entry.expires_at <= now:
            return False
        return query.max_age_s is None or now - entry.created_at <= query.max_age_s

    async def _exact_hit(self, query: CacheQuery, now: float) -> CacheHit | None:
        entry = await self._store.get_by_exact_key(query.exact_key)
        if entry is None or not self._servable(entry, query, now):
            return None
        if entry.negative_feedback >= self._settings.exact_block_after_negatives:
            return None
        return CacheHit(
            entry.entry_id, HitKind.EXACT, 1.0, 1.0, "exact match", now - entry.created_at, entry.response
        )

    async def _semantic_hit(self, query: CacheQuery, now: float) -> CacheHit | None:
        vector = self._query_vector(query.embedding)
        threshold = self._settings.similarity_threshold
        neighbours = await self._in_thread(
            self._index.search, query.partition.key, vector, self._settings.top_k
        )
        candidates = [(label_entry_id(label), cosine) for label, cosine in neighbours if cosine >= threshold]
        if not candidates:
            return None
        entries = await self._store.get([entry_id for entry_id, _ in candidates])
        for entry_id, cosine in candidates:
            entry = entries.get(entry_id)
            if (
                entry is None
                or entry.partition_key != query.partition.key
                or entry.embedder_key != self._embedder.key
                or not self._servable(entry, query, now)
            ):
                continue
            required = threshold + entry.threshold_adjust
            if required >= _BLOCKED_THRESHOLD or cosine < required:
                continue
            try:
                verdict = self._verifier.verify(query.query_text, entry.query_text, cosine)
            except Exception:
                # A broken verifier must never let an unverified answer through.
                logger.exception("cache verifier failed; candidate %s rejected", entry_id)
                self._stats.verifier_errors += 1
                continue
            if verdict.accept:
                return CacheHit(
                    entry_id,
                    HitKind.SEMANTIC,
                    cosine,
                    verdict.score,
                    verdict.reason,
                    now - entry.created_at,
                    entry.response,
                )
            self._stats.verifier_rejections += 1
        return None

    # -- insert ---------------------------------------------------------------------------------------

    def _refusal(
        self, query: CacheQuery, response: CachedResponse, ttl_s: float, failed: bool, truncated: bool
    ) -> str:
        if failed or truncated:
            return "the call failed or was truncated"
        if response.finish_reason not in self._settings.cacheable_finish_reasons:
            return f"finish_reason {response.finish_reason!r} is not cacheable"
        if not response.content.strip():
            return "empty answer"
        if not query.query_text.strip():
            return "no user turn to key on"
        if not ttl_s > 0:
            return f"ttl_s={ttl_s} is not positive"
        return ""

    async def insert(
        self,
        query: CacheQuery,
        response: CachedResponse,
        ttl_s: float | None = None,
        *,
        failed: bool = False,
        truncated: bool = False,
    ) -> str | None:
        """Store ``response`` for ``query``; returns the entry id, or None when the answer is not cacheable.

        Only complete answers are stored: ``finish_reason`` in ``cacheable_finish_reasons``, non-empty
        content, and neither ``failed`` nor ``truncated``. An entry with the same exact key is replaced.
        """
        self._check_open()
        ttl = self._settings.ttl_s if ttl_s is None else ttl_s
        refusal = self._refusal(query, response, ttl, failed, truncated)
        if refusal:
            logger.debug("not caching: %s", refusal)
            self._stats.refused_inserts += 1
            return None
        vector = self._query_vector(query.embedding)
        now = self._clock()
        entry = CacheEntry(
            entry_id=new_entry_id(),
            partition_key=query.partition.key,
            tenant=query.partition.tenant,
            namespace=query.partition.namespace,
            exact_key=query.exact_key,
            query_text=query.query_text,
            embedder_key=self._embedder.key,
            embedding=vector,
            response=response,
            created_at=now,
            expires_at=now + ttl,
        )
        async with self._write_lock:
            replaced = await self._store.insert(entry)
            await self._unindex(replaced)
            label = np.asarray([entry_label(entry.entry_id)], dtype=np.int64)
            if await self._in_thread(self._index.add, entry.partition_key, label, vector.reshape(1, -1)):
                self._schedule_rebuild(entry.partition_key)
            self._stats.entries += 1 - len(replaced)
            self._stats.inserts += 1
            await self._evict_if_full(now)
        self._maybe_purge(now)
        return entry.entry_id

    # -- removal --------------------------------------------------------------------------------------

    async def invalidate(
        self,
        entry_id: str | None = None,
        tenant: str | None = None,
        partition_key: str | None = None,
        older_than_s: float | None = None,
    ) -> int:
        """Delete the entries matching every given filter; returns how many. At least one is required."""
        self._check_open()
        created_before = None if older_than_s is None else self._clock() - older_than_s
        where = EntryFilter(
            entry_id=entry_id, tenant=tenant, partition_key=partition_key, created_before=created_before
        )
        if where.is_empty:
            raise ValueError("invalidate needs entry_id, tenant, partition_key or older_than_s")
        removed = await self._delete(where)
        self._stats.invalidated += removed
        return removed

    async def _delete(self, where: EntryFilter) -> int:
        async with self._write_lock:
            refs = await self._store.delete(where)
            await self._unindex(refs)
            self._stats.entries -= len(refs)
        return len(refs)

    async def _unindex(self, refs: Iterable[EntryRef]) -> None:
        by_partition: dict[str, list[int]] = {}
        for ref in refs:
            if ref.embedder_key == self._embedder.key:
                by_partition.setdefault(ref.partition_key, []).append(entry_label(ref.entry_id))
        for partition_key, labels in by_partition.items():
            if await self._in_thread(self._index.remove, partition_key, labels):
                self._schedule_rebuild(partition_key)

    async def _evict_if_full(self, now: float) -> None:
        """Called with the write lock held."""
        capacity = self._settings.capacity
        if self._stats.entries <= capacity:
            return
        await self._flush_usage()  # eviction order depends on the latest hits and savings
        self._stats.entries = await self._store.count()
        target = max(1, math.floor(capacity * (1.0 - self._settings.eviction_headroom)))
        if self._stats.entries <= capacity:
            return
        plan = EvictionPlan(
            order=self._settings.eviction,
            count=self._stats.entries - target,
            now=now,
            grace_s=self._settings.eviction_grace_s,
            age_floor_s=self._settings.eviction_age_floor_s,
        )
        refs = await self._store.evict(plan)
        await self._unindex(refs)
        self._stats.entries -= len(refs)
        self._stats.evicted += len(refs)

    async def _purge_expired(self) -> None:
        self._last_purge = now = self._clock()
        removed = await self._delete(EntryFilter(expires_before=now))
        self._stats.expired += removed

    def _maybe_purge(self, now: float) -> None:
        if now - self._last_purge >= self._settings.purge_interval_s:
            self._last_purge = now
            self._background.spawn(self._purge_expired(), "tierwise-cache-purge")

    # -- feedback and savings -------------------------------------------------------------------------

    async def record_feedback(self, entry_id: str, score: float) -> bool:
        """A quality judgment of a served entry, in [0, 1]; False when the entry is gone.

        A score below ``feedback_bad_below`` raises the entry's semantic threshold by
        ``feedback_threshold_step``; at ``exact_block_after_negatives`` negatives the entry is deleted.
        Good scores change nothing: one good answer does not prove its neighbours equivalent.
        """
        self._check_open()
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"feedback score must lie in [0, 1], got {score}")
        if score >= self._settings.feedback_bad_below:
            return bool(await self._store.get([entry_id]))
        state = await self._store.add_feedback(entry_id, self._settings.feedback_threshold_step, 1)
        if state is None:
            return False
        self._stats.negative_feedback += 1
        if state.negative_feedback >= self._settings.exact_block_after_negatives:
            await self._delete(EntryFilter(entry_id=entry_id))
        return True

    async def record_saving(self, entry_id: str, amount: float) -> None:
        """Credit ``amount`` (caller's units, e.g. money not spent) to an entry, for eviction by value."""
        self._check_open()
        if not (math.isfinite(amount) and amount >= 0):
            raise ValueError(f"saving must be a finite non-negative amount, got {amount}")
        self._note_usage(entry_id, _Usage(saved=amount))

    def _note_usage(self, entry_id: str, usage: _Usage) -> None:
        pending = self._usage.setdefault(entry_id, _Usage())
        pending.hits += usage.hits
        pending.saved += usage.saved
        if usage.last_hit_at is not None:
            pending.last_hit_at = max(pending.last_hit_at or usage.last_hit_at, usage.last_hit_at)
        now = self._clock()
        due = now - self._last_flush >= self._settings.usage_flush_interval_s
        if due or len(self._usage) >= self._settings.usage_flush_batch:
            self._last_flush = now
            self._background.spawn(self._flush_usage(), "tierwise-cache-usage")

    async def _flush_usage(self) -> None:
        pending, self._usage = self._usage, {}
        if pending:
            await self._store.touch(
                [EntryUsage(entry_id, u.hits, u.last_hit_at, u.saved) for entry_id, u in pending.items()]
            )

    # -- index plumbing -------------------------------------------------------------------------------

    async def _in_thread(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._index_threads, call, *args)

    def _schedule_rebuild(self, partition_key: str) -> None:
        if partition_key in self._rebuilding or self._closed:
            return
        self._rebuilding.add(partition_key)

        async def rebuild() -> None:
            try:
                loop = asyncio.get_running_loop()
                # Changes during a long build may call for another round; three bound the work.
                for _ in range(3):
                    if not await loop.run_in_executor(self._build_thread, self._index.rebuild, partition_key):
                        break
            finally:
                self._rebuilding.discard(partition_key)

        self._background.spawn(rebuild(), "tierwise-cache-rebuild")

    def _query_vector(self, embedding: Vector) -> Vector:
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if vector.shape != (self._embedder.dim,):
            raise ValueError(f"query embedding has shape {vector.shape}, expected ({self._embedder.dim},)")
        norm = float(np.linalg.norm(vector))
        if not math.isfinite(norm) or norm == 0.0:
            raise ValueError("query embedding is zero or not finite")
        return vector if abs(norm - 1.0) < 1e-4 else (vector / norm).astype(np.float32)

    # -- lifecycle ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosed("the semantic cache is closed")

    def stats(self) -> CacheStats:
        stats = replace(self._stats)
        stats.indexed_vectors = len(self._index)
        keys = self._index.partition_keys()
        stats.partitions = len(keys)
        stats.hnsw_partitions = sum(self._index.is_hnsw(key) for key in keys)
        stats.background_errors = self._background.errors
        return stats

    async def wait_idle(self) -> None:
        """Wait for background work (rebuilds, purges, counter flushes) started so far."""
        await self._background.drain()

    async def snapshot(self) -> bool:
        """Write the index snapshot to ``settings.snapshot_path``; False when no path is set."""
        path = self._settings.snapshot_path
        if path is None:
            return False
        async with self._write_lock:
            identity = await self._store.identity()
            manifest = _manifest(identity.instance_id, identity.generation, self._embedder)
            await self._in_thread(self._index.save, path, manifest)
        return True

    async def aclose(self) -> None:
        """Finish background work, write counters and the snapshot, close the store."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._background.drain()
            await self._flush_usage()
            await self.snapshot()
        finally:
            self._index_threads.shutdown(wait=False)
            self._build_thread.shutdown(wait=False)
            await self._store.aclose()


def _manifest(instance_id: str, generation: int, embedder: EmbedderInfo) -> dict[str, object]:
    return {"store": instance_id, "generation": generation, "embedder": embedder.key}


async def _load_or_rebuild_index(
    store: EntryStore, embedder: EmbedderInfo, settings: CacheSettings
) -> tuple[PartitionedIndex, bool]:
    """The index, and whether it came from the snapshot."""
    identity = await store.identity()
    path = settings.snapshot_path
    if path is not None and path.exists():
        try:
            index, manifest = await asyncio.to_thread(
                PartitionedIndex.load, path, embedder.dim, settings.index_params()
            )
        except Exception:
            # A snapshot only saves time; an unreadable one is rebuilt, never trusted.
            logger.warning("cache snapshot %s is unreadable; rebuilding from the store", path, exc_info=True)
        else:
            if manifest == _manifest(identity.instance_id, identity.generation, embedder):
                return index, True
            logger.info("cache snapshot %s is stale; rebuilding from the store", path)
    return await _rebuild_index(store, embedder, settings), False


async def _rebuild_index(
    store: EntryStore, embedder: EmbedderInfo, settings: CacheSettings
) -> PartitionedIndex:
    index = PartitionedIndex(embedder.dim, settings.index_params())

    def add_batch(groups: dict[str, list[tuple[int, Vector]]]) -> None:
        for partition_key, rows in groups.items():
            labels = np.asarray([label for label, _ in rows], dtype=np.int64)
            index.add(partition_key, labels, np.stack([vector for _, vector in rows]))

    # Only vectors of this embedder's space are read: another model's vectors are never compared.
    async for batch in store.iter_vectors(embedder.key):
        groups: dict[str, list[tuple[int, Vector]]] = {}
        for row in batch:
            if row.embedding.shape == (embedder.dim,):
                groups.setdefault(row.partition_key, []).append((entry_label(row.entry_id), row.embedding))
        await asyncio.to_thread(add_batch, groups)
    for partition_key in index.partition_keys():
        await asyncio.to_thread(_rebuild_until_settled, index, partition_key)
    return index


def _rebuild_until_settled(index: PartitionedIndex, partition_key: str) -> None:
    while index.rebuild(partition_key):
        pass
