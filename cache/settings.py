"""Tunables of the semantic cache, with the reasons for their defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tierwise.cache.entry_state import EvictionOrder
from tierwise.cache.index import IndexParams
from tierwise.cache.onnx_embedder import DEFAULT_DIR


class CacheSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    similarity_threshold: float = Field(
        0.70,
        ge=0.0,
        le=1.0,
        description="Cosine a neighbour needs (plus its own feedback adjustment) before the verifier sees "
        "it. 0.70 is the shipped guarded verifier's cosine floor, chosen with its probability threshold on "
        "the QQP validation split (held-out test: precision 0.909, recall 0.411, wrong-serve 2.6 %). With "
        "verifier 'cosine' this is the whole decision and defaults to 0.90 instead (test: precision 0.80).",
    )
    top_k: int = Field(4, ge=1, le=64, description="Neighbours fetched per lookup and shown to the verifier.")
    ttl_s: float = Field(
        86_400.0, gt=0, description="Default lifetime of an entry (absolute, never sliding)."
    )
    capacity: int = Field(100_000, ge=1, description="Entries kept before eviction starts.")
    eviction: EvictionOrder = Field(EvictionOrder.LRU, description="Which entries go when full.")
    eviction_headroom: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="Evict down to capacity × (1 − headroom) at once, so a full cache does not evict on "
        "every insert.",
    )
    eviction_grace_s: float = Field(
        300.0,
        ge=0.0,
        description="saved_per_age: entries younger than this go last (they have had no chance to save).",
    )
    eviction_age_floor_s: float = Field(
        60.0, gt=0, description="saved_per_age: added to the age so a young entry's rate stays bounded."
    )
    hnsw_after: int = Field(
        20_000,
        ge=1,
        description="A partition switches from exact flat search to HNSW above this many vectors "
        "(flat search over 20k 384-d vectors is about a millisecond).",
    )
    hnsw_m: int = Field(32, ge=4, description="HNSW links per node.")
    hnsw_ef_construction: int = Field(80, ge=8, description="HNSW build-time search width.")
    hnsw_ef_search: int = Field(64, ge=8, description="HNSW query-time search width (recall vs speed).")
    approximate_index: Literal["auto", "hnsw", "ivf"] = Field(
        "auto",
        description="The index of a partition past hnsw_after: auto (HNSW, then IVF past ivf_after), "
        "hnsw (a graph) or ivf (k-means lists, retrained as the partition grows). At 1M clustered "
        "vectors IVF builds in minutes at recall@1 0.99 where a graph built in as long reached 0.82 "
        "(bench/bench_cache.py).",
    )
    ivf_after: int = Field(250_000, ge=1, description="auto: a partition past this many vectors uses IVF.")
    ivf_nprobe: int = Field(16, ge=1, description="IVF lists searched per query (recall vs speed).")
    faiss_search_threads: int = Field(
        1,
        ge=1,
        description="OpenMP threads of one FAISS search or add (set on the cache's index threads). One "
        "query gains nothing from OpenMP, and its spin-waits hurt badly on busy cores: a flat search "
        "over 2,000 vectors took 0.06-0.15 ms with 1 thread and 4-9 ms with 2 on a loaded 2-core host.",
    )
    faiss_build_threads: int = Field(
        0, ge=0, description="OpenMP threads of a background HNSW build; 0: the OpenMP default (all cores)."
    )
    max_tombstone_ratio: float = Field(
        0.2, gt=0.0, lt=1.0, description="An HNSW partition is rebuilt when this share of it was removed."
    )
    max_batch: int = Field(64, ge=1, description="BatchingEmbedder: most texts in one encode() call.")
    max_wait_us: int = Field(
        # 0: a lone request is encoded at once (2 ms of wait was most of Route's overhead over encode()
        # on the CPU); under load the next batch still fills while one encodes (bench_route.py).
        0,
        ge=0,
        description="BatchingEmbedder: longest a request waits for its batch to fill.",
    )
    max_queue: int = Field(
        # Two full batches: at 4x the capacity offered, 1024 let admitted requests wait 10-16x the
        # p99 at 64 in flight (and some past a 10 s deadline); 64 kept it under 4x (bench_route.py).
        128,
        ge=1,
        description="BatchingEmbedder: most requests waiting to be encoded; past it a new request fails at "
        "once (RESOURCE_EXHAUSTED, retry later) rather than queue behind seconds of work.",
    )
    max_queue_delay_ms: float = Field(
        # Off by default: on 2 shared cores with 1 embedding thread, 25 ms held admitted p99 at 4x
        # the capacity offered to ~3.6x the unloaded p99 (from 56-81x) but cut Route/s at 64 in
        # flight to about a third: refused calls still cost the loop (docs/architecture.md).
        0.0,
        ge=0,
        description="BatchingEmbedder: a request is refused (RESOURCE_EXHAUSTED, retry later) when the texts "
        "ahead of it would take longer than this to encode, at the recent time per text; 0: only max_queue "
        "bounds the wait.",
    )
    long_text_chars: int = Field(
        # A window-long text (256 word pieces, ~1,200 characters) encodes in ~50 ms against ~6 ms for
        # a 25-piece one (onnx, one thread): behind it, short requests waited up to 50 ms more.
        512,
        ge=0,
        description="BatchingEmbedder: texts (as embedded, after the clip) longer than this many characters "
        "queue apart and are encoded by a second thread, so short texts never wait behind them; 0: one queue.",
    )
    embedder: Literal["torch", "onnx"] = Field(
        "onnx",
        description="onnx: all-MiniLM-L6-v2 exported to fp32 ONNX (`tierwise cache export-embedder`, in an "
        "install with the train extra; `make demo` and `make test` run it first), run by onnxruntime, about "
        "3x faster for a short text on a CPU, and all the core install serves; torch: sentence-transformers "
        "(the train extra). The export is checked to give the same vectors (cosine >= 0.9999), so caches, "
        "snapshots and the verifier are shared between the two.",
    )
    onnx_embedder_dir: Path = Field(
        DEFAULT_DIR, description="embedder onnx: the directory `tierwise cache export-embedder` wrote."
    )
    feedback_bad_below: float = Field(
        0.5, ge=0.0, le=1.0, description="Feedback scores below this are negative."
    )
    feedback_threshold_step: float = Field(
        0.15,
        gt=0.0,
        description="Each negative feedback raises that entry's semantic threshold by this much; once the "
        "threshold reaches 1.0 it is served by exact match only (with the defaults, 0.70 + 2 x 0.15: after two).",
    )
    exact_block_after_negatives: int = Field(
        3,
        ge=1,
        description="After this many negative feedbacks the entry is deleted, so not even an exact "
        "repeat is served from it.",
    )
    cacheable_finish_reasons: tuple[str, ...] = Field(
        ("stop", "end_turn"),
        description="Answers that ended any other way (length, tool calls) are not stored.",
    )
    snapshot_path: Path | None = Field(
        None, description="Where the FAISS snapshot is written on close and read on open; None: rebuild."
    )
    purge_interval_s: float = Field(60.0, gt=0, description="How often expired entries are deleted.")
    usage_flush_interval_s: float = Field(
        1.0, gt=0, description="Hit and savings counters are written in batches at most this often."
    )
    usage_flush_batch: int = Field(256, ge=1, description="…or as soon as this many updates are pending.")
    # -- shared mode (store.kind redis): replicas share the entries and follow one change stream
    redis_prefix: str = Field(
        "tierwise:cache",
        min_length=1,
        pattern=r"^[^{}]+$",
        description="Key prefix of the shared store; replicas that share a cache use the same one.",
    )
    redis_timeout_s: float = Field(
        0.25,
        gt=0,
        description="Socket timeout of one Redis call: an unreachable Redis costs a lookup at most this "
        "(then calls fail at once until the reconnect backoff lets one through) and the lookup misses.",
    )
    redis_stream_maxlen: int = Field(
        100_000,
        ge=1,
        description="Changes kept in the replication stream (approximately; about 150 bytes each). A "
        "replica that falls further behind rebuilds its index from the entries.",
    )
    replication_block_s: float = Field(
        1.0, gt=0, description="Longest blocking read of the change stream; changes arrive at once."
    )
    replication_batch: int = Field(512, ge=1, description="Most changes applied to the index in one step.")
    reconnect_min_s: float = Field(0.5, gt=0, description="First wait before retrying an unreachable store.")
    reconnect_max_s: float = Field(
        5.0,
        gt=0,
        description="Longest wait between reconnection attempts (one probe costs a request at most "
        "redis_timeout_s; the cache serves misses until one succeeds).",
    )

    @model_validator(mode="after")
    def _reconnect_range(self) -> CacheSettings:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self

    def index_params(self) -> IndexParams:
        return IndexParams(
            hnsw_after=self.hnsw_after,
            hnsw_m=self.hnsw_m,
            hnsw_ef_construction=self.hnsw_ef_construction,
            hnsw_ef_search=self.hnsw_ef_search,
            max_tombstone_ratio=self.max_tombstone_ratio,
            approximate=self.approximate_index,
            ivf_after=self.ivf_after,
            ivf_nprobe=self.ivf_nprobe,
        )
