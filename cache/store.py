"""Cache entries and the storage interface behind the semantic cache.

The store is the source of truth: the FAISS index is rebuilt from it. It knows
nothing of similarity; it keeps entries, finds them by id or exact key, deletes
them by filter, and orders them for eviction. Every method is a coroutine so a
store may do I/O (SQLite in a thread, Redis over the network) without blocking
the event loop.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from tierwise.cache.embedder import Vector
from tierwise.cache.entry_state import EntryUsage, EvictionPlan, FeedbackState


def new_entry_id() -> str:
    """16 hex digits of a random positive int64, so the FAISS label is the id itself."""
    return f"{secrets.randbits(63):016x}"


def entry_label(entry_id: str) -> int:
    """The FAISS label of an entry (the inverse of :func:`label_entry_id`)."""
    if len(entry_id) != 16:
        raise ValueError(f"not a cache entry id: {entry_id!r}")
    try:
        return int(entry_id, 16)
    except ValueError:
        raise ValueError(f"not a cache entry id: {entry_id!r}") from None


def label_entry_id(label: int) -> str:
    return f"{label:016x}"


@dataclass(frozen=True, slots=True)
class CachedResponse:
    content: str
    finish_reason: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class CacheEntry:
    """One stored answer; times are seconds since the epoch, ``expires_at`` is absolute (never sliding).

    Compared by identity: the embedding is an array, and two reads of one entry are two objects.
    """

    entry_id: str
    partition_key: str
    tenant: str
    namespace: str
    exact_key: str
    query_text: str
    embedder_key: str
    embedding: Vector
    response: CachedResponse
    created_at: float
    expires_at: float
    hits: int = 0
    last_hit_at: float | None = None
    threshold_adjust: float = 0.0
    negative_feedback: int = 0
    saved: float = 0.0


@dataclass(frozen=True, slots=True)
class EntryRef:
    """Enough to remove an entry from the index."""

    entry_id: str
    partition_key: str
    embedder_key: str


@dataclass(frozen=True, slots=True)
class VectorRow:
    entry_id: str
    partition_key: str
    embedding: Vector


@dataclass(frozen=True, slots=True)
class EntryFilter:
    """Entries matching every field that is set; an empty filter matches nothing (see ``is_empty``)."""

    entry_id: str | None = None
    tenant: str | None = None
    partition_key: str | None = None
    created_before: float | None = None
    expires_before: float | None = None

    @property
    def is_empty(self) -> bool:
        return all(
            value is None
            for value in (
                self.entry_id,
                self.tenant,
                self.partition_key,
                self.created_before,
                self.expires_before,
            )
        )


@dataclass(frozen=True, slots=True)
class StoreIdentity:
    """``instance_id`` names the store's data; ``generation`` changes whenever entries are added or deleted."""

    instance_id: str
    generation: int


class EntryStore(Protocol):
    async def insert(self, entry: CacheEntry) -> list[EntryRef]:
        """Store ``entry`` durably; an entry with the same exact key is replaced and returned."""
        ...

    async def get(self, entry_ids: Sequence[str]) -> dict[str, CacheEntry]:
        """The entries among ``entry_ids`` that exist (expired ones included)."""
        ...

    async def get_by_exact_key(self, exact_key: str) -> CacheEntry | None: ...

    async def scan(self, where: EntryFilter) -> list[EntryRef]: ...

    async def delete(self, where: EntryFilter) -> list[EntryRef]:
        """Delete the entries matching ``where`` (none for an empty filter) and return them."""
        ...

    async def touch(self, usage: Sequence[EntryUsage]) -> None:
        """Add hit counts and savings; entries that are gone are skipped."""
        ...

    async def add_feedback(
        self, entry_id: str, threshold_delta: float, negative_delta: int
    ) -> FeedbackState | None:
        """Adjust an entry's threshold and negative count; None when the entry is gone."""
        ...

    async def evict(self, plan: EvictionPlan) -> list[EntryRef]:
        """Delete up to ``plan.count`` entries in ``plan.order`` and return them."""
        ...

    async def count(self) -> int: ...

    def iter_vectors(self, embedder_key: str, batch_size: int = 4096) -> AsyncIterator[list[VectorRow]]:
        """Every entry's vector in the space ``embedder_key`` (expired ones too), in batches."""
        ...

    async def identity(self) -> StoreIdentity: ...

    async def aclose(self) -> None: ...
