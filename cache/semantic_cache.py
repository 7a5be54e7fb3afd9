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

The parts live beside this module: ``semantic_query`` (query, hit, counters),
``semantic_core`` (state and plumbing), ``semantic_lookup``, ``semantic_insert``
and ``semantic_snapshot`` (loading and rebuilding the index).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace

from tierwise.cache.embedder import EmbedderInfo
from tierwise.cache.errors import CacheStoreError
from tierwise.cache.index import PartitionedIndex
from tierwise.cache.replication import ChangeFeed, FeedPosition, IndexChanges, IndexFollower, ReconnectBackoff
from tierwise.cache.semantic_core import PendingUsage
from tierwise.cache.semantic_insert import CacheWrites
from tierwise.cache.semantic_lookup import CacheLookup
from tierwise.cache.semantic_query import CacheClosed, CacheHit, CacheQuery, CacheStats, HitKind
from tierwise.cache.semantic_snapshot import (
    load_or_rebuild_index,
    read_replica_snapshot,
    rebuild_index,
    replica_manifest,
    store_manifest,
)
from tierwise.cache.settings import CacheSettings
from tierwise.cache.store import EntryFilter, EntryStore
from tierwise.cache.verification import CandidateVerifier, CosineOnlyVerifier

__all__ = ["CacheClosed", "CacheHit", "CacheQuery", "CacheStats", "HitKind", "SemanticCache"]

logger = logging.getLogger(__name__)


class SemanticCache(CacheLookup, CacheWrites):
    """Create with :meth:`open`; the cache owns the store from then on and closes it in :meth:`aclose`."""

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
            index, from_snapshot = await load_or_rebuild_index(store, embedder, settings)
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
        snapshot = await read_replica_snapshot(embedder, settings)
        if snapshot is not None and (current is None or snapshot[1].instance_id == current.instance_id):
            (index, position), from_snapshot = snapshot, True
        elif current is not None:
            try:
                index, position = await rebuild_index(store, embedder, settings), current
            except CacheStoreError as exc:
                logger.warning("could not read the shared cache store (%s); the index starts empty", exc)
        if position is not None:
            with contextlib.suppress(CacheStoreError):
                entries = await store.count()
        cache = cls(store, embedder, index, settings, verifier, clock, entries)
        cache._stats.index_from_snapshot = from_snapshot
        cache._feed_position = position
        backoff = ReconnectBackoff(settings.reconnect_min_s, settings.reconnect_max_s)
        cache._follower = IndexFollower(
            feed, cache, position, batch=settings.replication_batch, backoff=backoff
        )
        cache._follower.start()
        return cache

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
        self._note_usage(entry_id, PendingUsage(saved=amount))

    # -- replication (tierwise.cache.replication.ReplicaIndex) ----------------------------------------

    @property
    def embedder_key(self) -> str:
        return self._embedder.key

    async def apply_changes(self, changes: IndexChanges) -> None:
        """Apply changes read from the shared store's feed to the index; the store is not written."""
        async with self._write_lock:
            await self._unindex(changes.removed)
            await self._index_rows(changes.added)
            self._stats.entries += changes.entries_delta
            self._feed_position = changes.position

    async def reload_index(self, position: FeedPosition) -> None:
        """Swap in an index built from a scan of the store; changes after ``position`` are replayed."""
        index = await rebuild_index(self._store, self._embedder, self._settings)
        entries = await self._store.count()
        async with self._write_lock:
            self._index = index
            self._stats.entries = entries
            self._feed_position = position

    # -- lifecycle ------------------------------------------------------------------------------------

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
                manifest = store_manifest(identity.instance_id, identity.generation, self._embedder)
            elif self._feed_position is None:
                return False
            else:
                manifest = replica_manifest(self._feed_position, self._embedder)
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
