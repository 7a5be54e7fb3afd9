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

A store that is also a change feed (Redis) is shared by several replicas: an
:class:`~tierwise.cache.replication.IndexFollower` applies every replica's inserts and
deletions to this cache's index, and a snapshot records the feed position it
matches instead of the generation. A failing store never fails a lookup or an
insert: they miss or store nothing, and the failure is logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from tierwise.cache.batching import embedding_text
from tierwise.cache.embedder import EmbedderInfo, Vector
from tierwise.cache.index import PartitionedIndex, set_faiss_threads
from tierwise.cache.partition import (
    GenerationParams,
    Message,
    Partition,
    build_partition,
    exact_key,
    last_user_turn,
)
from tierwise.cache.replication import Backoff, ChangeFeed, FeedPosition, IndexFollower
from tierwise.cache.settings import CacheSettings
from tierwise.cache.store import (
    CachedResponse,
    CacheEntry,
    CacheStoreError,
    EntryFilter,
    EntryRef,
    EntryStore,
    EntryUsage,
    EvictionPlan,
    VectorRow,
    entry_label,
    label_entry_id,
    new_entry_id,
)
from tierwise.cache.verification import CandidateVerifier, CosineOnlyVerifier, VerifierVerdict

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
    approximate_partitions: int = 0
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
    store_errors: int = 0
    """Store calls that failed (a lookup missed, an insert stored nothing, a flush or purge waits)."""
    replication_following: bool = False
    """Shared store: the last read of the change feed succeeded."""
    replicated_changes: int = 0
    index_reloads: int = 0
    replication_errors: int = 0
    replication_lag_s: float | None = None
    """Shared store: age of the newest applied change when it was applied."""


@dataclass(slots=True)
class _Usage:
    hits: int = 0
    last_hit_at: float | None = None
    saved: float = 0.0

    def add(self, other: _Usage) -> None:
        self.hits += other.hits
        self.saved += other.saved
        if other.last_hit_at is not None:
            self.last_hit_at = max(self.last_hit_at or other.last_hit_at, other.last_hit_at)


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


def _whole_text_embedded(text: str) -> bool:
    """Semantic matching only for texts the embedder read whole: a clipped text's vector cannot see
    its middle, and long prompts that share few-shot examples but ask different questions land a
    cosine of 0.95-0.97 apart (RouterBench Winogrande). Those are served by exact match only."""
    return bool(text.strip()) and embedding_text(text) == text


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
        self._store_failing = False
        self._follower: IndexFollower | None = None
        self._feed_position: FeedPosition | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        store: EntryStore,
        embedder: EmbedderInfo,
        settings: CacheSettings | None = None,
        verifier: CandidateVerifier | None = None,
        clock: Callable[[], float] = time.time,
        feed: ChangeFeed | None = None,
    ) -> SemanticCache:
        """Load the index from a current snapshot or rebuild it from ``store``; purge expired entries.

        ``feed`` (by default ``store`` itself when it is a :class:`ChangeFeed`) makes this cache a replica
        of a shared store: its index follows the feed until :meth:`aclose`. A replica opens even while
        the shared store is unreachable (with its snapshot, or empty) and catches up once it is back.
        """
        settings = settings or CacheSettings()
        verifier = verifier or CosineOnlyVerifier(settings.similarity_threshold)
        if feed is None and isinstance(store, ChangeFeed):
            feed = store
        if feed is not None:
            cache = await cls._open_replica(store, feed, embedder, settings, verifier, clock)
        else:
            index, from_snapshot = await _load_or_rebuild_index(store, embedder, settings)
            cache = cls(store, embedder, index, settings, verifier, clock, await store.count())
            cache._stats.index_from_snapshot = from_snapshot
        await cache._purge_expired()
        return cache

    @classmethod
    async def _open_replica(
        cls,
        store: EntryStore,
        feed: ChangeFeed,
        embedder: EmbedderInfo,
        settings: CacheSettings,
        verifier: CandidateVerifier,
        clock: Callable[[], float],
    ) -> SemanticCache:
        index = PartitionedIndex(embedder.dim, settings.index_params())
        position: FeedPosition | None = None
        from_snapshot, entries = False, 0
        try:
            current: FeedPosition | None = await feed.position()  # before the scan: later changes replay
        except CacheStoreError as exc:
            logger.warning("shared cache store unreachable at start (%s); following it once it is back", exc)
            current = None
        snapshot = await _read_replica_snapshot(embedder, settings)
        if snapshot is not None and (current is None or snapshot[1].instance_id == current.instance_id):
            (index, position), from_snapshot = snapshot, True
        elif current is not None:
            try:
                index, position = await _rebuild_index(store, embedder, settings), current
            except CacheStoreError as exc:
                logger.warning("could not read the shared cache store (%s); the index starts empty", exc)
        if position is not None:
            with contextlib.suppress(CacheStoreError):
                entries = await store.count()
        cache = cls(store, embedder, index, settings, verifier, clock, entries)
        cache._stats.index_from_snapshot = from_snapshot
        cache._feed_position = position
        backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        cache._follower = IndexFollower(
            feed, cache, position, batch=settings.replication_batch, backoff=backoff
        )
        cache._follower.start()
        return cache

    # -- lookup ---------------------------------------------------------------------------------------

    async def lookup(self, query: CacheQuery) -> CacheHit | None:
        """The stored answer for ``query``: exact match first, then a verified semantic neighbour."""
        self._check_open()
        now = self._clock()
        self._stats.lookups += 1
        self._maybe_purge(now)
        try:
            hit = await self._exact_hit(query, now)
            if hit is None and _whole_text_embedded(query.query_text):
                hit = await self._semantic_hit(query, now)
        except CacheStoreError as exc:
            self._store_failed(exc)
            hit = None
        else:
            self._store_ok()
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
        eligible: list[tuple[CacheEntry, float]] = []
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
            eligible.append((entry, cosine))
        if not eligible:
            return None
        # A verifier may run a transformer (milliseconds): off the event loop, one hop for all candidates.
        verified, rejections, errors = await self._in_thread(self._first_verified, query, vector, eligible)
        self._stats.verifier_rejections += rejections
        self._stats.verifier_errors += errors
        if verified is None:
            return None
        entry, cosine, verdict = verified
        return CacheHit(
            entry.entry_id,
            HitKind.SEMANTIC,
            cosine,
            verdict.score,
            verdict.reason,
            now - entry.created_at,
            entry.response,
        )

    def _first_verified(
        self, query: CacheQuery, vector: Vector, eligible: list[tuple[CacheEntry, float]]
    ) -> tuple[tuple[CacheEntry, float, VerifierVerdict] | None, int, int]:
        """The first candidate the verifier accepts, with the counts of rejections and verifier errors."""
        rejections = errors = 0
        for entry, cosine in eligible:
            try:
                verdict = self._verifier.verify(
                    query.query_text, entry.query_text, cosine, (vector, entry.embedding)
                )
            except Exception:
                # A broken verifier must never let an unverified answer through.
                logger.exception("cache verifier failed; candidate %s rejected", entry.entry_id)
                errors += 1
                continue
            if verdict.accept:
                return (entry, cosine, verdict), rejections, errors
            rejections += 1
        return None, rejections, errors

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
        """Store ``response`` for ``query``; returns the entry id, or None when the answer is not cacheable
        or the store failed (counted in ``store_errors``).

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
            try:
                replaced = await self._store.insert(entry)
            except CacheStoreError as exc:
                self._store_failed(exc)
                return None
            self._store_ok()
            await self._unindex(replaced)
            await self._index_rows([VectorRow(entry.entry_id, entry.partition_key, vector)])
            self._stats.entries += 1 - len(replaced)
            self._stats.inserts += 1
            try:
                await self._evict_if_full(now)
            except CacheStoreError as exc:
                self._store_failed(exc)  # stored; the next insert tries the eviction again
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
        """Delete the entries matching every given filter; returns how many. At least one is required.

        Raises :class:`CacheStoreError` when the store fails: the caller must know nothing was deleted.
        """
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

    async def _index_rows(self, rows: Iterable[VectorRow]) -> None:
        for partition_key, group in _by_partition(rows, self._embedder.dim).items():
            labels = np.asarray([label for label, _ in group], dtype=np.int64)
            vectors = np.stack([vector for _, vector in group])
            if await self._in_thread(self._index.add, partition_key, labels, vectors):
                self._schedule_rebuild(partition_key)

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
            keep=target,
        )
        refs = await self._store.evict(plan)
        await self._unindex(refs)
        self._stats.entries -= len(refs)
        self._stats.evicted += len(refs)

    async def _purge_expired(self) -> None:
        self._last_purge = now = self._clock()
        try:
            removed = await self._delete(EntryFilter(expires_before=now))
        except CacheStoreError as exc:
            self._store_failed(exc)  # the next purge deletes them; lookups never serve expired entries
            return
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
        self._usage.setdefault(entry_id, _Usage()).add(usage)
        now = self._clock()
        due = now - self._last_flush >= self._settings.usage_flush_interval_s
        if due or len(self._usage) >= self._settings.usage_flush_batch:
            self._last_flush = now
            self._background.spawn(self._flush_usage(), "tierwise-cache-usage")

    async def _flush_usage(self) -> None:
        pending, self._usage = self._usage, {}
        if not pending:
            return
        try:
            await self._store.touch(
                [EntryUsage(entry_id, u.hits, u.last_hit_at, u.saved) for entry_id, u in pending.items()]
            )
        except CacheStoreError as exc:
            self._store_failed(exc)
            for entry_id, usage in pending.items():  # kept for the next flush
                self._usage.setdefault(entry_id, _Usage()).add(usage)

    # -- replication (tierwise.cache.replication.ReplicaIndex) and store health --------------------------------

    @property
    def embedder_key(self) -> str:
        return self._embedder.key

    async def apply_changes(
        self,
        added: Sequence[VectorRow],
        removed: Sequence[EntryRef],
        entries_delta: int,
        position: FeedPosition,
    ) -> None:
        """Apply changes read from the shared store's feed to the index; the store is not written."""
        async with self._write_lock:
            await self._unindex(removed)
            await self._index_rows(added)
            self._stats.entries += entries_delta
            self._feed_position = position

    async def reload_index(self, position: FeedPosition) -> None:
        """Swap in an index built from a scan of the store; changes after ``position`` are replayed."""
        index = await _rebuild_index(self._store, self._embedder, self._settings)
        entries = await self._store.count()
        async with self._write_lock:
            self._index = index
            self._stats.entries = entries
            self._feed_position = position

    def _store_failed(self, exc: CacheStoreError) -> None:
        self._stats.store_errors += 1
        if not self._store_failing:
            self._store_failing = True
            logger.warning("cache store failed (%s); lookups miss and answers go uncached meanwhile", exc)

    def _store_ok(self) -> None:
        if self._store_failing:
            self._store_failing = False
            logger.info("cache store answers again")

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
        stats.approximate_partitions = sum(self._index.is_approximate(key) for key in keys)
        stats.background_errors = self._background.errors
        if self._follower is not None:
            follower = self._follower.stats
            stats.replication_following = follower.following
            stats.replicated_changes = follower.applied
            stats.index_reloads = follower.reloads
            stats.replication_errors = follower.errors
            stats.replication_lag_s = follower.lag_s
        return stats

    async def wait_idle(self) -> None:
        """Wait for background work (rebuilds, purges, counter flushes) started so far."""
        await self._background.drain()

    async def snapshot(self) -> bool:
        """Write the index snapshot to ``settings.snapshot_path``; False when no path is set, or when a
        replica does not know which feed position its index matches (it started while the store was down).
        """
        path = self._settings.snapshot_path
        if path is None:
            return False
        async with self._write_lock:
            if self._follower is None:
                identity = await self._store.identity()
                manifest = _manifest(identity.instance_id, identity.generation, self._embedder)
            elif self._feed_position is None:
                return False
            else:
                manifest = _replica_manifest(self._feed_position, self._embedder)
            await self._in_thread(self._index.save, path, manifest)
        return True

    async def aclose(self) -> None:
        """Finish background work, write counters and the snapshot, close the store."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._follower is not None:
                await self._follower.aclose()
            await self._background.drain()
            await self._flush_usage()
            await self.snapshot()
        finally:
            self._index_threads.shutdown(wait=False)
            self._build_thread.shutdown(wait=False)
            await self._store.aclose()


def _manifest(instance_id: str, generation: int, embedder: EmbedderInfo) -> dict[str, object]:
    return {"store": instance_id, "generation": generation, "embedder": embedder.key}


def _replica_manifest(position: FeedPosition, embedder: EmbedderInfo) -> dict[str, object]:
    feed = {"instance_id": position.instance_id, "change_id": position.change_id, "seq": position.seq}
    return {"store": position.instance_id, "feed": feed, "embedder": embedder.key}


async def _read_snapshot(
    embedder: EmbedderInfo, settings: CacheSettings
) -> tuple[PartitionedIndex, dict[str, Any]] | None:
    path = settings.snapshot_path
    if path is None or not path.exists():
        return None
    try:
        return await asyncio.to_thread(PartitionedIndex.load, path, embedder.dim, settings.index_params())
    except Exception:
        # A snapshot only saves time; an unreadable one is rebuilt, never trusted.
        logger.warning("cache snapshot %s is unreadable; rebuilding from the store", path, exc_info=True)
        return None


async def _load_or_rebuild_index(
    store: EntryStore, embedder: EmbedderInfo, settings: CacheSettings
) -> tuple[PartitionedIndex, bool]:
    """The index, and whether it came from the snapshot."""
    identity = await store.identity()
    snapshot = await _read_snapshot(embedder, settings)
    if snapshot is not None:
        index, manifest = snapshot
        if manifest == _manifest(identity.instance_id, identity.generation, embedder):
            return index, True
        logger.info("cache snapshot %s is stale; rebuilding from the store", settings.snapshot_path)
    return await _rebuild_index(store, embedder, settings), False


async def _read_replica_snapshot(
    embedder: EmbedderInfo, settings: CacheSettings
) -> tuple[PartitionedIndex, FeedPosition] | None:
    """A replica's snapshot and the feed position it matches; the follower replays what came after."""
    snapshot = await _read_snapshot(embedder, settings)
    if snapshot is None:
        return None
    index, manifest = snapshot
    feed = manifest.get("feed")
    if manifest.get("embedder") == embedder.key and isinstance(feed, dict):
        try:
            return index, FeedPosition(str(feed["instance_id"]), str(feed["change_id"]), int(feed["seq"]))
        except (KeyError, TypeError, ValueError):
            pass
    logger.info("cache snapshot %s is not a replica's of this embedder; rebuilding", settings.snapshot_path)
    return None


def _by_partition(rows: Iterable[VectorRow], dim: int) -> dict[str, list[tuple[int, Vector]]]:
    groups: dict[str, list[tuple[int, Vector]]] = {}
    for row in rows:
        if row.embedding.shape == (dim,):
            groups.setdefault(row.partition_key, []).append((entry_label(row.entry_id), row.embedding))
    return groups


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
        await asyncio.to_thread(add_batch, _by_partition(batch, embedder.dim))
    for partition_key in index.partition_keys():
        await asyncio.to_thread(_rebuild_until_settled, index, partition_key)
    return index


def _rebuild_until_settled(index: PartitionedIndex, partition_key: str) -> None:
    while index.rebuild(partition_key):
        pass
