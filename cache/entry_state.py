"""What changes on an entry after it is written: its hit and savings counters, its feedback, and
the eviction order those counters drive."""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EntryUsage:
    """Increments for one entry's hit and savings counters, flushed in batches."""

    entry_id: str
    hits: int = 0
    last_hit_at: float | None = None
    saved: float = 0.0


@dataclass(frozen=True, slots=True)
class FeedbackState:
    threshold_adjust: float
    negative_feedback: int


class EvictionOrder(enum.Enum):
    """Which entries go first when the cache is full."""

    LRU = "lru"
    """Least recently used (created or last hit) first."""
    SAVED_PER_AGE = "saved_per_age"
    """Lowest ``saved / (age + age_floor)`` first; entries younger than a grace period go last."""


@dataclass(frozen=True, slots=True)
class EvictionPlan:
    order: EvictionOrder
    count: int
    now: float
    grace_s: float = 0.0
    age_floor_s: float = 1.0
    keep: int | None = None
    """Never leave fewer entries than this. ``count`` was computed from a ``count()`` read moments
    before; a store shared by several writers must also check ``keep`` atomically, so that replicas
    evicting at once do not evict twice. A store with one writer may rely on ``count`` alone."""
