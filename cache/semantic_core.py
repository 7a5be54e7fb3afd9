"""The semantic cache's state and the plumbing its lookup, insert and facade share.

``CacheCore`` owns the store, the index and its threads, the counters, pending usage
(hits and savings written in batches off the request path), background tasks, and the
deletions and purges that keep the index in step with the store.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from tierwise.cache.embedder import EmbedderInfo, Vector
from tierwise.cache.entry_state import EntryUsage
from tierwise.cache.errors import CacheStoreError
from tierwise.cache.index import PartitionedIndex, set_faiss_threads
from tierwise.cache.replication import FeedPosition, IndexFollower
from tierwise.cache.semantic_query import CacheClosed, CacheStats
from tierwise.cache.semantic_snapshot import group_by_partition
from tierwise.cache.settings import CacheSettings
from tierwise.cache.store import EntryFilter, EntryRef, EntryStore, VectorRow, entry_label
from tierwise.cache.verification import CandidateVerifier

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class PendingUsage:
    """Hits and savings of one entry not yet written to the store."""

    hits: int = 0
    last_hit_at: float | None = None
    saved: float = 0.0

    def add(self, other: PendingUsage) -> None:
        self.hits += other.hits
        self.saved += other.saved
        if other.last_hit_at is not None:
            self.last_hit_at = max(self.last_hit_at or other.last_hit_at, other.last_hit_at)


@dataclass(slots=True)
class BackgroundTasks:
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


class CacheCore:
    """State and shared plumbing of :class:`~tierwise.cache.semantic_cache.SemanticCache`."""

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
        self._background = BackgroundTasks()
        self._rebuilding: set[str] = set()
        self._usage: dict[str, PendingUsage] = {}
        self._last_flush = clock()
        self._last_purge = clock()
        self._stats = CacheStats(entries=entries)
        self._store_failing = False
        self._follower: IndexFollower | None = None
        self._feed_position: FeedPosition | None = None
        self._closed = False

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

    async def _index_rows(self, rows: Iterable[VectorRow]) -> None:
        for partition_key, group in group_by_partition(rows, self._embedder.dim).items():
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

    # -- store health ---------------------------------------------------------------------------------

    def _store_failed(self, exc: CacheStoreError) -> None:
        self._stats.store_errors += 1
        if not self._store_failing:
            self._store_failing = True
            logger.warning("cache store failed (%s); lookups miss and answers go uncached meanwhile", exc)

    def _store_ok(self) -> None:
        if self._store_failing:
            self._store_failing = False
            logger.info("cache store answers again")

    # -- usage counters -------------------------------------------------------------------------------

    def _note_usage(self, entry_id: str, usage: PendingUsage) -> None:
        self._usage.setdefault(entry_id, PendingUsage()).add(usage)
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
                self._usage.setdefault(entry_id, PendingUsage()).add(usage)

    # -- deletion and purges --------------------------------------------------------------------------

    async def _delete(self, where: EntryFilter) -> int:
        async with self._write_lock:
            refs = await self._store.delete(where)
            await self._unindex(refs)
            self._stats.entries -= len(refs)
        return len(refs)

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

    # -- lifecycle ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosed("the semantic cache is closed")
