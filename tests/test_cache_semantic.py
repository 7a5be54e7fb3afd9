"""The SemanticCache facade over the real embedder, real FAISS and real SQLite."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from tests.test_cache_embedding import load_sentence_embedder
from tierwise.cache.batching import BatchingEmbedder, embedding_text
from tierwise.cache.embedder import EmbedderInfo, SentenceEmbedder, Vector
from tierwise.cache.entry_state import EvictionOrder
from tierwise.cache.partition import GenerationParams, Message
from tierwise.cache.semantic_cache import CacheClosed, CacheQuery, HitKind, SemanticCache
from tierwise.cache.settings import CacheSettings
from tierwise.cache.sqlite_store import SqliteEntryStore
from tierwise.cache.store import CachedResponse
from tierwise.cache.verification import CosineOnlyVerifier, PairVectors, VerifierVerdict

SYSTEM = "You are the support assistant of an online shop."
ANSWER = CachedResponse("Go to Settings, then Security, then Reset password.", "stop", "small-model", 20, 11)


@pytest.fixture(scope="session")
def sentence_embedder() -> SentenceEmbedder:
    return load_sentence_embedder()


@functools.cache
def _embedding(embedder: SentenceEmbedder, text: str) -> Vector:
    vector: Vector = embedder.encode([embedding_text(text)])[0]
    return vector


def embed(embedder: SentenceEmbedder, text: str) -> Vector:
    """Embeddings of the few test sentences, computed once each."""
    return _embedding(embedder, text).copy()


@dataclass
class FakeClock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    """A cache on a temporary SQLite file, plus what is needed to build queries and reopen it."""

    embedder: SentenceEmbedder
    path: Path
    clock: FakeClock
    settings: CacheSettings
    cache: SemanticCache
    info: EmbedderInfo
    opened: list[SemanticCache] = field(default_factory=list)

    def query(
        self,
        text: str,
        *,
        tenant: str = "acme",
        namespace: str = "support",
        system: str = SYSTEM,
        history: Sequence[Message] = (),
        params: GenerationParams | None = None,
        tools_json: str = "",
        max_age_s: float | None = None,
    ) -> CacheQuery:
        messages = [("system", system), *history, ("user", text)]
        vector = embed(self.embedder, text)
        return CacheQuery.create(
            tenant=tenant,
            namespace=namespace,
            messages=messages,
            embedding=vector,
            params=params or GenerationParams("small", 512, 0.0),
            tools_json=tools_json,
            max_age_s=max_age_s,
        )

    async def reopen(self, **changes: Any) -> SemanticCache:
        await self.cache.aclose()
        settings = self.settings.model_copy(update=changes.pop("settings", {}))
        info = changes.pop("info", self.info)
        store = await SqliteEntryStore.open(self.path)
        self.cache = await SemanticCache.open(store, info, settings, clock=self.clock, **changes)
        self.opened.append(self.cache)
        return self.cache


async def open_harness(embedder: SentenceEmbedder, tmp_path: Path, **settings: Any) -> Harness:
    clock = FakeClock()
    cache_settings = CacheSettings(**settings)
    path = tmp_path / "cache.db"
    store = await SqliteEntryStore.open(path)
    cache = await SemanticCache.open(store, embedder.info, cache_settings, clock=clock)
    return Harness(embedder, path, clock, cache_settings, cache, embedder.info, [cache])


@pytest_asyncio.fixture
async def harness(sentence_embedder: SentenceEmbedder, tmp_path: Path) -> AsyncIterator[Harness]:
    h = await open_harness(sentence_embedder, tmp_path)
    yield h
    for cache in h.opened:
        await cache.aclose()


# -- hits ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_exact_hit(harness: Harness) -> None:
    query = harness.query("How do I reset my password?")
    assert await harness.cache.lookup(query) is None
    entry_id = await harness.cache.insert(query, ANSWER)
    harness.clock.now += 30
    hit = await harness.cache.lookup(harness.query("How do I reset my password?  "))
    assert hit is not None and hit.entry_id == entry_id
    assert (hit.kind, hit.similarity, hit.response, hit.age_s) == (HitKind.EXACT, 1.0, ANSWER, 30)
    stats = harness.cache.stats()
    assert (stats.exact_hits, stats.misses, stats.inserts, stats.entries) == (1, 1, 1, 1)


@pytest.mark.asyncio
async def test_paraphrase_is_a_semantic_hit_and_an_unrelated_question_is_not(harness: Harness) -> None:
    entry_id = await harness.cache.insert(harness.query("How do I reset my password?"), ANSWER)
    hit = await harness.cache.lookup(harness.query("How can I reset my password?"))
    assert hit is not None and hit.kind is HitKind.SEMANTIC and hit.entry_id == entry_id
    assert harness.settings.similarity_threshold <= hit.similarity < 1.0
    assert hit.verifier_reason.startswith("cosine")
    assert await harness.cache.lookup(harness.query("How do I delete my account?")) is None


@pytest.mark.asyncio
async def test_embedding_comes_through_the_batching_embedder(harness: Harness) -> None:
    batcher = BatchingEmbedder(harness.embedder, max_batch=8, max_wait_us=5_000)
    texts = ["How do I reset my password?", "How can I reset my password?"]
    vectors = await asyncio.gather(*(batcher.embed(embedding_text(text)) for text in texts))
    await batcher.aclose()
    stored, asked = (
        CacheQuery.create(tenant="acme", namespace="support", messages=[("user", text)], embedding=vector)
        for text, vector in zip(texts, vectors, strict=True)
    )
    entry_id = await harness.cache.insert(stored, ANSWER)
    hit = await harness.cache.lookup(asked)
    assert hit is not None and hit.entry_id == entry_id and hit.kind is HitKind.SEMANTIC


# -- scope: never across tenants, prompts, tools, parameters, conversations ----------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "other",
    [
        {"tenant": "globex"},
        {"namespace": "billing"},
        {"system": "You are a pirate. Answer in pirate speak."},
        {"tools_json": '[{"name": "reset_password", "parameters": {}}]'},
        {"params": GenerationParams("large", 512, 0.0)},
        {"params": GenerationParams("small", 4096, 0.0)},
        {"params": GenerationParams("small", 512, 1.0)},
        {"params": GenerationParams("small", 512, 0.0, ("\n\n",))},
    ],
)
async def test_no_hit_across_scopes(harness: Harness, other: dict[str, Any]) -> None:
    await harness.cache.insert(harness.query("How do I reset my password?"), ANSWER)
    assert await harness.cache.lookup(harness.query("How do I reset my password?", **other)) is None
    assert await harness.cache.lookup(harness.query("How can I reset my password?", **other)) is None


@pytest.mark.asyncio
async def test_follow_up_only_hits_after_the_same_conversation(harness: Harness) -> None:
    flight: list[Message] = [
        ("user", "Book me a flight to Oslo on Friday"),
        ("assistant", "Done: flight booked."),
    ]
    hotel: list[Message] = [
        ("user", "Book me a hotel in Oslo on Friday"),
        ("assistant", "Done: hotel booked."),
    ]
    cancelled = CachedResponse("I cancelled your flight to Oslo.", "stop", "small-model")
    entry_id = await harness.cache.insert(harness.query("cancel it", history=flight), cancelled)
    assert await harness.cache.lookup(harness.query("cancel it", history=hotel)) is None
    assert await harness.cache.lookup(harness.query("cancel it")) is None
    hit = await harness.cache.lookup(harness.query("cancel it", history=flight))
    assert hit is not None and hit.entry_id == entry_id


# -- lifetime --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_ttl_expiry_is_absolute_and_purged(harness: Harness) -> None:
    query = harness.query("How do I reset my password?")
    await harness.cache.insert(query, ANSWER, ttl_s=100)
    harness.clock.now += 99
    assert await harness.cache.lookup(query) is not None  # a hit does not extend the lifetime
    harness.clock.now += 1
    assert await harness.cache.lookup(query) is None
    assert await harness.cache.lookup(harness.query("How can I reset my password?")) is None
    harness.clock.now += harness.settings.purge_interval_s
    await harness.cache.lookup(query)  # starts the periodic purge
    await harness.cache.wait_idle()
    stats = harness.cache.stats()
    assert (stats.expired, stats.entries, stats.indexed_vectors) == (1, 0, 0)


@pytest.mark.asyncio
async def test_max_age(harness: Harness) -> None:
    await harness.cache.insert(harness.query("How do I reset my password?"), ANSWER)
    harness.clock.now += 600
    assert await harness.cache.lookup(harness.query("How do I reset my password?", max_age_s=300)) is None
    assert await harness.cache.lookup(harness.query("How can I reset my password?", max_age_s=300)) is None
    assert await harness.cache.lookup(harness.query("How do I reset my password?", max_age_s=900)) is not None


@pytest.mark.asyncio
async def test_invalidation_by_entry_tenant_partition_and_age(harness: Harness) -> None:
    cache = harness.cache
    first = await cache.insert(harness.query("How do I reset my password?"), ANSWER)
    harness.clock.now += 1000
    await cache.insert(harness.query("Where is my order?"), ANSWER)
    other_tenant = harness.query("Where is my order?", tenant="globex")
    await cache.insert(other_tenant, ANSWER)
    billing = harness.query("How do I get an invoice?", namespace="billing")
    await cache.insert(billing, ANSWER)
    assert cache.stats().entries == 4
    with pytest.raises(ValueError):
        await cache.invalidate()
    assert await cache.invalidate(older_than_s=500) == 1
    assert await cache.invalidate(entry_id=first) == 0
    assert await cache.invalidate(partition_key=billing.partition.key) == 1
    assert await cache.lookup(billing) is None
    assert await cache.invalidate(tenant="acme") == 1
    assert await cache.lookup(harness.query("Where is my order?")) is None
    assert await cache.lookup(other_tenant) is not None
    assert cache.stats().indexed_vectors == 1
    assert await cache.invalidate(entry_id=(await cache.lookup(other_tenant)).entry_id) == 1  # type: ignore[union-attr]
    assert cache.stats().entries == 0


@pytest.mark.asyncio
async def test_refuses_answers_that_are_not_complete(harness: Harness) -> None:
    query = harness.query("How do I reset my password?")
    cache = harness.cache
    assert await cache.insert(query, CachedResponse("partial answ", "length", "m")) is None
    assert await cache.insert(query, CachedResponse("", "stop", "m")) is None
    assert await cache.insert(query, CachedResponse("   ", "end_turn", "m")) is None
    assert await cache.insert(query, ANSWER, failed=True) is None
    assert await cache.insert(query, ANSWER, truncated=True) is None
    assert await cache.insert(query, ANSWER, ttl_s=0) is None
    no_user_turn = CacheQuery.create(
        tenant="acme", namespace="support", messages=[("system", SYSTEM)], embedding=query.embedding
    )
    assert await cache.insert(no_user_turn, ANSWER) is None
    assert await cache.lookup(query) is None
    assert cache.stats().refused_inserts == 7
    assert await cache.insert(query, CachedResponse("Fine.", "end_turn", "m")) is not None
    wrong_dim = CacheQuery(query.partition, query.messages, "q", np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError):
        await cache.insert(wrong_dim, ANSWER)


@pytest.mark.asyncio
async def test_same_request_replaces_its_entry(harness: Harness) -> None:
    query = harness.query("How do I reset my password?")
    first = await harness.cache.insert(query, ANSWER)
    newer = CachedResponse("Use the 'Forgot password' link.", "stop", "small-model")
    second = await harness.cache.insert(query, newer)
    assert first != second
    hit = await harness.cache.lookup(harness.query("How can I reset my password?"))
    assert hit is not None and hit.entry_id == second and hit.response == newer
    assert harness.cache.stats().indexed_vectors == 1


# -- restart and embedder identity --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_restart_keeps_entries_and_the_rebuilt_index_finds_them(harness: Harness) -> None:
    entry_id = await harness.cache.insert(harness.query("How do I reset my password?"), ANSWER)
    cache = await harness.reopen()
    assert not cache.stats().index_from_snapshot
    hit = await cache.lookup(harness.query("How can I reset my password?"))
    assert hit is not None and hit.entry_id == entry_id and hit.kind is HitKind.SEMANTIC


@pytest.mark.asyncio
async def test_snapshot_is_used_when_current_and_rebuilt_when_stale_or_corrupt(
    harness: Harness, tmp_path: Path
) -> None:
    snapshot = {"snapshot_path": tmp_path / "index.npz"}
    cache = await harness.reopen(settings=snapshot)
    first = await cache.insert(harness.query("How do I reset my password?"), ANSWER)
    cache = await harness.reopen(settings=snapshot)  # closing wrote the snapshot
    assert cache.stats().index_from_snapshot
    hit = await cache.lookup(harness.query("How can I reset my password?"))
    assert hit is not None and hit.entry_id == first

    # Written to without a snapshot: the old snapshot is stale and must not be trusted.
    cache = await harness.reopen()
    second = await cache.insert(harness.query("Where is my order?"), ANSWER)
    cache = await harness.reopen(settings=snapshot)
    assert not cache.stats().index_from_snapshot
    hit = await cache.lookup(harness.query("Where's my order?"))
    assert hit is not None and hit.entry_id == second

    await cache.aclose()
    (tmp_path / "index.npz").write_bytes(b"not a snapshot")
    cache = await harness.reopen(settings=snapshot)
    assert not cache.stats().index_from_snapshot
    assert cache.stats().indexed_vectors == 2


@pytest.mark.asyncio
async def test_another_embedder_never_reads_foreign_vectors(harness: Harness) -> None:
    query = harness.query("How do I reset my password?")
    await harness.cache.insert(query, ANSWER)
    foreign = EmbedderInfo("some-other-model", harness.embedder.info.dim)
    cache = await harness.reopen(info=foreign)
    assert cache.stats().indexed_vectors == 0 and cache.stats().entries == 1
    # Same dimension, other space: the vectors are not compared, so no semantic hit ...
    assert await cache.lookup(harness.query("How can I reset my password?")) is None
    # ... while the exact tier, which compares no vectors, still answers the identical request.
    hit = await cache.lookup(query)
    assert hit is not None and hit.kind is HitKind.EXACT
    # Entries written in the foreign space are invisible to the original embedder's index.
    await cache.insert(harness.query("Where is my order?"), ANSWER)
    cache = await harness.reopen()
    assert cache.stats().indexed_vectors == 1
    assert await cache.lookup(harness.query("Where's my order?")) is None

    smaller = EmbedderInfo("tiny-model", 8)
    cache = await harness.reopen(info=smaller)
    assert cache.stats().indexed_vectors == 0
    with pytest.raises(ValueError, match="shape"):
        await cache.lookup(harness.query("How can I reset my password?"))


# -- feedback, verifier ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_negative_feedback_tightens_then_blocks(harness: Harness) -> None:
    cache = harness.cache
    exact = harness.query("How do I reset my password?")
    paraphrase = harness.query("How can I reset my password?")
    entry_id = await cache.insert(exact, ANSWER)
    assert entry_id is not None
    hit = await cache.lookup(paraphrase)
    assert hit is not None
    assert await cache.record_feedback(entry_id, 0.9)  # good feedback changes nothing
    assert await cache.record_feedback(entry_id, 0.1)
    assert await cache.record_feedback(entry_id, 0.0)
    # Two negatives: threshold 0.92 + 2 × 0.04 reaches 1.0, so exact repeats only.
    assert await cache.lookup(paraphrase) is None
    assert (await cache.lookup(exact)) is not None
    assert await cache.record_feedback(entry_id, 0.2)
    assert await cache.lookup(exact) is None  # a third negative removes the entry entirely
    assert not await cache.record_feedback(entry_id, 0.0)
    with pytest.raises(ValueError):
        await cache.record_feedback(entry_id, 1.5)


@pytest.mark.asyncio
async def test_one_negative_raises_the_bar_by_one_step(
    sentence_embedder: SentenceEmbedder, tmp_path: Path
) -> None:
    h = await open_harness(
        sentence_embedder, tmp_path, similarity_threshold=0.90, feedback_threshold_step=0.05
    )
    try:
        entry_id = await h.cache.insert(h.query("How do I reset my password?"), ANSWER)
        close = h.query("What is the way to reset my password?")  # cosine about 0.97
        further = h.query("What's the capital city of France?")
        assert entry_id is not None and await h.cache.lookup(close) is not None
        await h.cache.record_feedback(entry_id, 0.0)
        assert await h.cache.lookup(close) is not None  # 0.97 still clears 0.95
        await h.cache.record_feedback(entry_id, 0.0)
        assert await h.cache.lookup(close) is None  # but not 1.0
        assert await h.cache.lookup(further) is None
    finally:
        await h.cache.aclose()


class RecordingVerifier:
    def __init__(self, accept: bool, fail: bool = False) -> None:
        self.accept, self.fail = accept, fail
        self.calls: list[tuple[str, str, float]] = []
        self.vectors: list[PairVectors | None] = []

    def verify(
        self, query_text: str, candidate_text: str, cosine: float, vectors: PairVectors | None = None
    ) -> VerifierVerdict:
        self.calls.append((query_text, candidate_text, cosine))
        self.vectors.append(vectors)
        if self.fail:
            raise RuntimeError("verifier model missing")
        return VerifierVerdict(self.accept, 0.77 if self.accept else 0.1, "recorded")


@pytest.mark.asyncio
@pytest.mark.parametrize(("accept", "fail"), [(True, False), (False, False), (True, True)])
async def test_verifier_decides_and_a_failing_one_rejects(harness: Harness, accept: bool, fail: bool) -> None:
    await harness.cache.insert(harness.query("How do I reset my password?"), ANSWER)
    verifier = RecordingVerifier(accept, fail)
    cache = await harness.reopen(verifier=verifier)
    hit = await cache.lookup(harness.query("How can I reset my password?"))
    assert verifier.calls and verifier.calls[0][:2] == (
        "How can I reset my password?",
        "How do I reset my password?",
    )
    # The verifier sees both embeddings, and their dot product is the cosine it was given.
    pair = verifier.vectors[0]
    assert pair is not None
    assert float(np.dot(pair[0], pair[1])) == pytest.approx(verifier.calls[0][2], abs=1e-5)
    if accept and not fail:
        assert hit is not None and (hit.verifier_score, hit.verifier_reason) == (0.77, "recorded")
    else:
        assert hit is None
    stats = cache.stats()
    assert (stats.verifier_errors, stats.verifier_rejections) == ((1, 0) if fail else (0, 0 if accept else 1))
    # The exact tier does not ask the verifier.
    calls = len(verifier.calls)
    assert await cache.lookup(harness.query("How do I reset my password?")) is not None
    assert len(verifier.calls) == calls


def test_cosine_only_verifier() -> None:
    verifier = CosineOnlyVerifier(0.9)
    assert verifier.verify("a", "b", 0.95).accept and not verifier.verify("a", "b", 0.85).accept
    with pytest.raises(ValueError):
        CosineOnlyVerifier(1.5)


# -- capacity --------------------------------------------------------------------------------------


QUESTIONS = [
    "How do I reset my password?",
    "Where is my order?",
    "How do I get an invoice?",
    "Can I change my delivery address?",
]


@pytest.mark.asyncio
async def test_lru_eviction(sentence_embedder: SentenceEmbedder, tmp_path: Path) -> None:
    h = await open_harness(sentence_embedder, tmp_path, capacity=3, eviction_headroom=0.0)
    try:
        ids = []
        for question in QUESTIONS[:3]:
            ids.append(await h.cache.insert(h.query(question), ANSWER))
            h.clock.now += 10
        assert await h.cache.lookup(h.query(QUESTIONS[0])) is not None  # the oldest is used again
        h.clock.now += 10
        await h.cache.insert(h.query(QUESTIONS[3]), ANSWER)
        assert h.cache.stats().evicted == 1
        assert await h.cache.lookup(h.query(QUESTIONS[1])) is None  # least recently used went
        assert await h.cache.lookup(h.query(QUESTIONS[0])) is not None
        assert h.cache.stats().indexed_vectors == 3
    finally:
        await h.cache.aclose()


@pytest.mark.asyncio
async def test_eviction_keeps_what_saved_most(sentence_embedder: SentenceEmbedder, tmp_path: Path) -> None:
    h = await open_harness(
        sentence_embedder,
        tmp_path,
        capacity=3,
        eviction_headroom=0.0,
        eviction=EvictionOrder.SAVED_PER_AGE,
        eviction_grace_s=60.0,
    )
    try:
        ids = []
        for question in QUESTIONS[:3]:
            ids.append(await h.cache.insert(h.query(question), ANSWER))
            h.clock.now += 100
        # The most recently used entry saved nothing; the oldest saved the most.
        await h.cache.record_saving(ids[0], 5.0)  # type: ignore[arg-type]
        await h.cache.record_saving(ids[1], 0.5)  # type: ignore[arg-type]
        assert await h.cache.lookup(h.query(QUESTIONS[2])) is not None
        with pytest.raises(ValueError):
            await h.cache.record_saving(ids[0], -1.0)  # type: ignore[arg-type]
        h.clock.now += 100
        await h.cache.insert(h.query(QUESTIONS[3]), ANSWER)
        assert await h.cache.lookup(h.query(QUESTIONS[2])) is None
        for kept in (QUESTIONS[0], QUESTIONS[1], QUESTIONS[3]):
            assert await h.cache.lookup(h.query(kept)) is not None
    finally:
        await h.cache.aclose()


# -- concurrency and the HNSW switch -----------------------------------------------------------------


def random_unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    vector = rng.standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
async def test_concurrent_inserts_and_lookups_with_approximate_switch(tmp_path: Path, kind: str) -> None:
    info = EmbedderInfo("synthetic", 32)
    settings = CacheSettings(
        hnsw_after=40,
        hnsw_m=8,
        hnsw_ef_construction=40,
        similarity_threshold=0.99,
        approximate_index=kind,  # type: ignore[arg-type]
    )
    store = await SqliteEntryStore.open(tmp_path / "cache.db")
    cache = await SemanticCache.open(store, info, settings)
    rng = np.random.default_rng(11)
    vectors = [random_unit(rng, 32) for _ in range(160)]

    def query(i: int) -> CacheQuery:
        return CacheQuery.create(
            tenant=f"tenant-{i % 2}",
            namespace="n",
            messages=[("user", f"question {i}")],
            embedding=vectors[i],
        )

    def paraphrase(i: int) -> CacheQuery:
        # Another text (so no exact hit) with the same vector: only the semantic tier can answer.
        base = query(i)
        return CacheQuery(base.partition, (("user", f"question {i}?"),), f"question {i}?", vectors[i])

    async def insert(i: int) -> tuple[int, str | None]:
        return i, await cache.insert(query(i), CachedResponse(f"answer {i}", "stop", "m"))

    async def lookup(i: int) -> None:
        hit = await cache.lookup(paraphrase(i))
        assert hit is None or hit.response.content == f"answer {i}"

    results = await asyncio.gather(*(insert(i) for i in range(160)), *(lookup(i) for i in range(160)))
    ids = dict(result for result in results if result is not None)
    await cache.wait_idle()
    stats = cache.stats()
    assert stats.approximate_partitions == 2 and stats.indexed_vectors == 160
    assert {cache._index.partition_kind(key) for key in cache._index.partition_keys()} == {kind}
    for i in range(160):
        hit = await cache.lookup(paraphrase(i))
        assert hit is not None and hit.entry_id == ids[i] and hit.kind is HitKind.SEMANTIC
    await cache.aclose()
    with pytest.raises(CacheClosed):
        await cache.lookup(query(0))
