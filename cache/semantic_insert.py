"""The semantic cache's write path: insert (refusing incomplete answers), invalidation, capacity eviction."""

from __future__ import annotations

import logging
import math

from tierwise.cache.entry_state import EvictionPlan
from tierwise.cache.errors import CacheStoreError
from tierwise.cache.semantic_core import CacheCore
from tierwise.cache.semantic_query import CacheQuery
from tierwise.cache.store import CachedResponse, CacheEntry, EntryFilter, VectorRow, new_entry_id

logger = logging.getLogger(__name__)


class CacheWrites(CacheCore):
    """Insert, invalidate and evict; every store write and its index change run under the write lock."""

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
