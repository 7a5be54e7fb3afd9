"""Semantic-cache benchmarks: index lookup latency and recall, facade lookup, embedding throughput.

Not part of the test suite. Every number is printed beside its baseline measured in the same run:

* index: per-query search latency (p50/p99) in one partition of N synthetic unit vectors, exact
  flat search against HNSW, and HNSW's recall@1 against the exact answer for cache-like queries
  (a stored vector plus noise, cosine about 0.9 to it);
* facade: ``SemanticCache.lookup`` end to end (SQLite store, FAISS, verifier) on a smaller cache;
* embedding: texts/s of ``BatchingEmbedder`` under 64 concurrent callers as a ratio of plain
  batched ``encode()`` over the same texts (goal: at least 0.8).

    .venv/bin/python bench/bench_cache.py                       # 10k and 100k vectors
    .venv/bin/python bench/bench_cache.py --sizes 10000 100000 1000000   # the full 1M (1.5 GB)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache.batching import BatchingEmbedder
from cache.embedder import EmbedderInfo, Matrix, SentenceEmbedder
from cache.index import IndexParams, PartitionedIndex, set_faiss_threads
from cache.semantic_cache import CacheQuery, SemanticCache
from cache.settings import CacheSettings
from cache.sqlite_store import SqliteEntryStore
from cache.store import CachedResponse

DIM = 384


def unit_rows(rng: np.random.Generator, count: int) -> Matrix:
    rows = rng.standard_normal((count, DIM), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def near_queries(
    rng: np.random.Generator, base: Matrix, count: int, noise: float = 0.5
) -> tuple[Matrix, np.ndarray]:
    """Queries at cosine ~0.9 from random stored rows (the cache's case: a paraphrase of a stored question)."""
    sources = rng.integers(0, len(base), size=count)
    queries = base[sources] + noise * unit_rows(rng, count)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries.astype(np.float32), sources


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1e3:7.3f} ms  p99 {p99 * 1e3:7.3f} ms"


def timed_searches(index: PartitionedIndex, queries: Matrix) -> tuple[list[float], list[int]]:
    latencies, answers = [], []
    for query in queries:
        start = time.perf_counter()
        result = index.search("p", query, 4)
        latencies.append(time.perf_counter() - start)
        answers.append(result[0][0] if result else -1)
    return latencies, answers


def bench_index(
    sizes: list[int], queries_per_size: int, params: IndexParams, search_threads: int, build_threads: int
) -> None:
    print(
        f"\n== index: one partition, {DIM}-d, top-4, {queries_per_size} queries (cosine ~0.9 to a stored row)"
    )
    print(
        f"   HNSW M={params.hnsw_m} efConstruction={params.hnsw_ef_construction} efSearch={params.hnsw_ef_search}"
    )
    print(f"   FAISS OpenMP threads: {search_threads} per search, {build_threads} per build")
    rng = np.random.default_rng(7)
    for size in sizes:
        base = unit_rows(rng, size)
        labels = np.arange(size, dtype=np.int64)
        queries, sources = near_queries(rng, base, queries_per_size)

        set_faiss_threads(search_threads)
        flat = PartitionedIndex(DIM, IndexParams(hnsw_after=size + 1))
        flat.add("p", labels, base)
        flat_latency, truth = timed_searches(flat, queries)
        del flat

        hnsw = PartitionedIndex(
            DIM, IndexParams(1, params.hnsw_m, params.hnsw_ef_construction, params.hnsw_ef_search)
        )
        set_faiss_threads(build_threads)
        start = time.perf_counter()
        hnsw.add("p", labels[:2], base[:2])
        hnsw.rebuild("p")  # empty-ish HNSW, then bulk add: the same path a partition takes when it grows
        hnsw.add("p", labels[2:], base[2:])
        build_s = time.perf_counter() - start
        set_faiss_threads(search_threads)
        hnsw_latency, answers = timed_searches(hnsw, queries)
        del hnsw

        recall = float(np.mean(np.asarray(answers) == np.asarray(truth)))
        source_hit = float(np.mean(np.asarray(truth) == sources))
        ratio = statistics.median(flat_latency) / statistics.median(hnsw_latency)
        print(f"  N={size:>9,}  flat {percentiles(flat_latency)}")
        print(
            f"  N={size:>9,}  HNSW {percentiles(hnsw_latency)}  recall@1 {recall:.4f}  "
            f"speed-up x{ratio:.1f} (p50)  build {build_s:.1f} s  (exact top-1 = source row: {source_hit:.4f})"
        )


async def bench_facade(entries: int, lookups: int) -> None:
    print(f"\n== facade: SemanticCache.lookup over SQLite + FAISS, {entries:,} entries in one partition")
    rng = np.random.default_rng(11)
    base = unit_rows(rng, entries)
    info = EmbedderInfo("synthetic", DIM)
    with tempfile.TemporaryDirectory() as folder:
        store = await SqliteEntryStore.open(Path(folder) / "cache.db")
        cache = await SemanticCache.open(
            store, info, CacheSettings(similarity_threshold=0.8, capacity=entries * 2)
        )

        def query(text: str, vector: np.ndarray) -> CacheQuery:
            return CacheQuery.create(tenant="t", namespace="n", messages=[("user", text)], embedding=vector)

        start = time.perf_counter()
        for i in range(entries):
            await cache.insert(query(f"question {i}", base[i]), CachedResponse(f"answer {i}", "stop", "m"))
        insert_s = (time.perf_counter() - start) / entries
        queries, sources = near_queries(rng, base, lookups)
        semantic, exact, hits = [], [], 0
        for i, (vector, source) in enumerate(zip(queries, sources, strict=True)):
            start = time.perf_counter()
            hit = await cache.lookup(query(f"paraphrase {i}", vector))
            semantic.append(time.perf_counter() - start)
            hits += hit is not None and hit.response.content == f"answer {source}"
            start = time.perf_counter()
            await cache.lookup(query(f"question {source}", base[source]))
            exact.append(time.perf_counter() - start)
        await cache.aclose()
    print(f"  insert (fsync per entry)   mean {insert_s * 1e3:.2f} ms")
    print(f"  exact hit                  {percentiles(exact)}")
    print(f"  semantic lookup            {percentiles(semantic)}  (right answer served: {hits}/{lookups})")


def sample_texts(count: int) -> list[str]:
    subjects = ["password", "invoice", "order", "refund", "delivery address", "subscription", "account"]
    verbs = ["reset", "change", "cancel", "track", "download", "update", "close"]
    tails = ["", " on the mobile app", " before it ships", " for my company account", " without logging in"]
    rng = np.random.default_rng(3)
    return [
        f"How do I {rng.choice(verbs)} my {rng.choice(subjects)}{rng.choice(tails)}? (ticket {i})"
        for i in range(count)
    ]


async def batched_throughput(embedder: SentenceEmbedder, texts: list[str], concurrency: int) -> float:
    batcher = BatchingEmbedder(embedder, max_batch=64, max_wait_us=2000)
    queue = list(reversed(texts))

    async def client() -> None:
        while queue:
            await batcher.embed(queue.pop())

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await batcher.aclose()
    return len(texts) / elapsed


def plain_throughput(encode: Callable[[list[str]], Matrix], texts: list[str]) -> float:
    start = time.perf_counter()
    for offset in range(0, len(texts), 64):
        encode(texts[offset : offset + 64])
    return len(texts) / (time.perf_counter() - start)


def bench_embedding(count: int, rounds: int, device: str, torch_threads: int) -> None:
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)
    embedder = SentenceEmbedder(device=device)
    texts = sample_texts(count)
    embedder.encode(texts[:64])  # warm-up
    print(f"\n== embedding: {count} texts, device {embedder.device}, torch threads {torch.get_num_threads()}")
    ratios = []
    for round_number in range(rounds):
        plain = plain_throughput(embedder.encode, texts)
        batched = asyncio.run(batched_throughput(embedder, texts, concurrency=64))
        ratios.append(batched / plain)
        print(
            f"  round {round_number + 1}: plain encode(64) {plain:8.1f} texts/s   "
            f"BatchingEmbedder x64 concurrent {batched:8.1f} texts/s   ratio {batched / plain:.3f}"
        )
    print(f"  median ratio {statistics.median(ratios):.3f} (goal >= 0.8)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--faiss-threads", type=int, default=1, help="per search, as the cache sets it")
    parser.add_argument("--faiss-build-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--facade-entries", type=int, default=2000)
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--skip", nargs="*", default=[], choices=["index", "facade", "embedding"])
    args = parser.parse_args()
    if "index" not in args.skip:
        params = IndexParams(1, args.hnsw_m, args.ef_construction, args.ef_search)
        bench_index(args.sizes, args.queries, params, args.faiss_threads, args.faiss_build_threads)
    if "facade" not in args.skip:
        asyncio.run(bench_facade(args.facade_entries, min(args.queries, 500)))
    if "embedding" not in args.skip:
        bench_embedding(args.texts, args.rounds, args.device, args.torch_threads)


if __name__ == "__main__":
    main()
