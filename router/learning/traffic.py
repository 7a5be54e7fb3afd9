"""Traffic samples: what each served request looked like to the router, kept for training and reports.

A sample holds the request's embedding and the classifier's prompt statistics
(``tierwise.classifier.features``), the tier that served it and the model version that
routed it, and the prompt text only for tenants that allow storing prompts
(``learning.traffic.store_prompts_tenants``); by default no text is kept.

``TrafficRecorder.observe`` is what the request path pays: a reference to the
finished request appended to an in-memory queue. A background task takes
batches (``batch_size`` samples, or whatever arrived within
``flush_interval_s``), computes the statistics and writes the batch to the
store in a worker thread, retrying with backoff while the store fails. Unlike
spend records, samples are not journalled: a crash loses at most the queue,
and a full queue drops new samples (counted), never blocking a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from tierwise.cache.backoff import Backoff, Jitter
from tierwise.classifier.features import EMBEDDING_DIM, FEATURE_VERSION, STATISTIC_NAMES, prompt_statistics
from tierwise.router.config import TrafficConfig
from tierwise.router.outcome import Completion
from tierwise.router.types import RequestSpec

log = logging.getLogger("tierwise.traffic")

FloatVector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class TrafficSample:
    request_id: str
    ts: float
    tenant: str
    feature: str
    experiment: str
    arm: str
    tier: str  # the tier that served the answer (for a cache hit: the tier the decision chose)
    model: str
    model_version: str  # the classifier version that routed it; "" for other policies
    cache_result: str  # miss | exact | semantic
    input_tokens: int
    turns: int
    embedding: bytes | None  # float32 x EMBEDDING_DIM, little-endian; None when nothing embedded it
    statistics: bytes  # float32 prompt statistics, STATISTIC_NAMES order
    feature_version: str = FEATURE_VERSION
    prompt: str | None = None  # only for tenants that allow storing prompts
    # A keyed hash of the prompt text (no text): repeats of one prompt share it, so training can keep
    # them on one side of its held-out split. "" when unknown.
    prompt_key: str = ""

    def features(self) -> FloatVector | None:
        """The classifier's feature vector (embedding + statistics); None without an embedding."""
        if self.embedding is None or self.feature_version != FEATURE_VERSION:
            return None
        embedding = np.frombuffer(self.embedding, dtype="<f4")
        statistics = np.frombuffer(self.statistics, dtype="<f4")
        if embedding.shape[0] != EMBEDDING_DIM or statistics.shape[0] != len(STATISTIC_NAMES):
            return None
        return np.concatenate([embedding, statistics]).astype(np.float32)


class TrafficStore(Protocol):
    """A durable store of traffic samples. Called from worker threads, one call at a time."""

    def write(self, samples: Sequence[TrafficSample]) -> int:
        """Store the samples in one transaction; request ids already stored are skipped. Returns how many were new."""
        ...

    def samples(self, since: float, until: float, tenant: str | None = None) -> Iterator[TrafficSample]:
        """Samples with ``since <= ts < until``, oldest first."""
        ...

    def get_many(self, request_ids: Sequence[str]) -> dict[str, TrafficSample]: ...

    def purge_older_than(self, seconds: float, *, now: float | None = None) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Observed:
    spec: RequestSpec
    completion: Completion
    ts: float


@dataclass(frozen=True, slots=True)
class TrafficStats:
    queued: int
    written: int
    dropped: int  # observed while the queue was full
    write_failures: int


def prompt_key(text: str, salt: bytes) -> str:
    """HMAC-SHA256 of the prompt under the deployment's secret salt: equal prompts, equal keys; the text
    cannot be recovered by hashing guesses without the salt."""
    return hmac.new(salt, text.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def sample_of(item: _Observed, store_prompts: frozenset[str], salt: bytes) -> TrafficSample:
    """The stored form of a finished request (runs in the writer's thread: the statistics cost CPU)."""
    spec, decision = item.spec, item.completion.decision
    text = spec.prompt_text
    turns = sum(1 for m in spec.messages if m.role != "system")
    tokens = decision.estimated_input_tokens
    embedding = item.completion.embedding
    hit = decision.cache_hit
    return TrafficSample(
        request_id=decision.request_id,
        ts=item.ts,
        tenant=spec.tenant,
        feature=spec.feature,
        experiment=decision.experiment,
        arm=decision.arm,
        tier=decision.tier,
        model=decision.model,
        model_version=decision.model_version,
        cache_result="miss" if hit is None else hit.kind,
        input_tokens=tokens,
        turns=turns,
        embedding=None if embedding is None else np.asarray(embedding, dtype="<f4").tobytes(),
        statistics=np.asarray(prompt_statistics(text, tokens, turns), dtype="<f4").tobytes(),
        prompt=text if spec.tenant in store_prompts else None,
        prompt_key=prompt_key(text, salt),
    )


class TrafficRecorder:
    def __init__(
        self,
        store: TrafficStore,
        settings: TrafficConfig,
        *,
        salt: bytes = b"",
        retry_initial_s: float = 0.05,
        retry_max_s: float = 30.0,
        purge_interval_s: float = 3600.0,
    ) -> None:
        self.store = store
        self._settings = settings
        self._store_prompts = frozenset(settings.store_prompts_tenants)
        self._salt = salt
        self._retry = Backoff(retry_initial_s, retry_max_s, jitter=Jitter.EQUAL)
        self._purge_interval_s = purge_interval_s
        self._queue: deque[_Observed] = deque()
        self._counts = {"written": 0, "dropped": 0, "write_failures": 0}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- the request path ----------------------------------------------------

    def observe(self, spec: RequestSpec, completion: Completion) -> None:
        """Queue one finished request; never blocks, never raises for I/O."""
        if len(self._queue) >= self._settings.max_queued:
            self._counts["dropped"] += 1
            return
        self._queue.append(_Observed(spec, completion, time.time()))
        self._idle.clear()
        if len(self._queue) in (1, self._settings.batch_size):
            self._wake.set()

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._write_forever(), name="traffic-writer"))
        if self._settings.retention_days is not None:
            self._tasks.append(asyncio.create_task(self._purge_forever(), name="traffic-retention"))

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Write everything observed so far; False when the store did not take it in time."""
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def aclose(self, timeout_s: float = 10.0) -> None:
        self._closing = True
        self._wake.set()
        for task in self._tasks[1:]:
            task.cancel()
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._tasks[0]), timeout_s)
            self._tasks[0].cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._queue:
            log.warning("traffic samples not written before shutdown", extra={"samples": len(self._queue)})
        await asyncio.to_thread(self.store.close)

    def stats(self) -> TrafficStats:
        return TrafficStats(
            len(self._queue), self._counts["written"], self._counts["dropped"], self._counts["write_failures"]
        )

    # -- the writer ----------------------------------------------------------

    async def _write_forever(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._queue) < self._settings.batch_size and not self._closing:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._settings.flush_interval_s)
            batch = [self._queue[i] for i in range(min(self._settings.batch_size, len(self._queue)))]
            await self._store(batch)
            for _ in batch:
                self._queue.popleft()

    def _write(self, batch: list[_Observed]) -> int:
        return self.store.write([sample_of(item, self._store_prompts, self._salt) for item in batch])

    async def _store(self, batch: list[_Observed]) -> None:
        self._retry.reset()  # each batch starts from the initial delay
        while True:
            try:
                self._counts["written"] += await asyncio.to_thread(self._write, batch)
                return
            except Exception as exc:
                self._counts["write_failures"] += 1
                delay = self._retry.next_delay()
                log.warning(
                    "traffic store write failed; retrying", extra={"error": repr(exc), "retry_s": delay}
                )
                if self._closing:
                    return  # shutting down: the batch is lost rather than holding the shutdown
                await asyncio.sleep(delay)

    async def _purge_forever(self) -> None:
        days = self._settings.retention_days
        assert days is not None
        while True:
            try:
                removed = await asyncio.to_thread(self.store.purge_older_than, days * 86400)
                if removed:
                    log.info("purged old traffic samples", extra={"samples": removed})
            except Exception as exc:
                log.warning("traffic retention purge failed", extra={"error": repr(exc)})
            await asyncio.sleep(self._purge_interval_s)

    # -- reading ---------------------------------------------------------------

    async def samples(self, since: float, until: float, tenant: str | None = None) -> list[TrafficSample]:
        return await asyncio.to_thread(lambda: list(self.store.samples(since, until, tenant)))


def build_traffic_recorder(settings: TrafficConfig, store_path: Path, salt: bytes) -> TrafficRecorder | None:
    """``salt``: the deployment's secret for prompt keys (the end-user id salt, shared by replicas)."""
    if not settings.enabled:
        return None
    from tierwise.router.learning.traffic_sqlite import SqliteTrafficStore

    return TrafficRecorder(SqliteTrafficStore(store_path / "traffic.sqlite3"), settings, salt=salt)
