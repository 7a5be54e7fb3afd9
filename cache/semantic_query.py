"""What the semantic cache takes and returns: the query, a hit and its kind, the counters, the closed error."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from tierwise.cache.batching import embedding_text
from tierwise.cache.embedder import Vector
from tierwise.cache.partition import (
    GenerationParams,
    Message,
    Partition,
    build_partition,
    exact_key,
    last_user_turn,
)
from tierwise.cache.store import CachedResponse


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
    # A request with attachments (images) is answered by its exact key only: the embedding reads
    # its text alone, so a similar text says nothing of whether the images match.
    exact_only: bool = False
    # Made once, where the query is made (off the event loop for a long prompt: router/request_work.py).
    exact_key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exact_key", exact_key(self.partition, self.messages))

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
        attachments: str = "",
    ) -> CacheQuery:
        """``embedding`` must be of ``embedding_text(last_user_turn(messages))``; ``attachments`` (a
        digest of the request's images) keys the partition and makes the query exact-only."""
        messages = tuple((str(role), str(content)) for role, content in messages)
        partition = build_partition(tenant, namespace, messages, params, tools_json, attachments)
        return cls(
            partition, messages, last_user_turn(messages), embedding, max_age_s, exact_only=bool(attachments)
        )


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


def whole_text_embedded(text: str) -> bool:
    """Semantic matching only for texts the embedder read whole: a clipped text's vector cannot see
    its middle, and long prompts that share few-shot examples but ask different questions land a
    cosine of 0.95-0.97 apart (RouterBench Winogrande). Those are served by exact match only."""
    return bool(text.strip()) and embedding_text(text) == text


class CacheClosed(RuntimeError):
    """The cache was used after ``aclose()``."""
