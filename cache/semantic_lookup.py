"""The semantic cache's read path: the exact key first, then a verified semantic neighbour."""

from __future__ import annotations

import logging

from tierwise.cache.embedder import Vector
from tierwise.cache.errors import CacheStoreError
from tierwise.cache.semantic_core import CacheCore, PendingUsage
from tierwise.cache.semantic_query import CacheHit, CacheQuery, HitKind, whole_text_embedded
from tierwise.cache.store import CacheEntry, label_entry_id
from tierwise.cache.verification import VerifierVerdict

logger = logging.getLogger(__name__)

_BLOCKED_THRESHOLD = 1.0 - 1e-6  # a required cosine this high means "never semantically"


class CacheLookup(CacheCore):
    """Lookup: exact match, then nearest neighbours over the threshold that the verifier accepts."""

    async def lookup(self, query: CacheQuery) -> CacheHit | None:
        """The stored answer for ``query``: exact match first, then a verified semantic neighbour."""
        self._check_open()
        now = self._clock()
        self._stats.lookups += 1
        self._maybe_purge(now)
        try:
            hit = await self._exact_hit(query, now)
            if hit is None and not query.exact_only and whole_text_embedded(query.query_text):
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
        self._note_usage(hit.entry_id, PendingUsage(hits=1, last_hit_at=now))
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
