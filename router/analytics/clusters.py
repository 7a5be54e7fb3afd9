"""Where the money goes: the window's requests grouped by prompt embedding, largest spend first.

Spend comes from the ledger's per-request records; each request's embedding from its
traffic sample (``learning.traffic``), joined by request id. Requests without a stored
embedding (traffic samples off, nothing embedded the prompt, judge and shadow calls)
are counted apart, never guessed into a cluster. Clusters are k-means over the
embeddings with a fixed seed, fitted on the requests in request-id order, so the same
window gives the same clusters.

A cluster is described by numbers only: size, spend and its share, tier mix, mean
tokens, what caching and routing saved, and spend per unit of judged quality. Prompt
text appears only as representative prompts (the members nearest the centroid) of
tenants that allow storing prompts now (``learning.traffic.store_prompts_tenants``):
the traffic store keeps no text for the others, and text kept before a tenant
withdrew is not shown. A preamble every shown-able prompt starts with (few-shot
examples, a fixed instruction) is cut to "…", so the part that sets them apart shows.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import numpy as np
import numpy.typing as npt

from tierwise.cache.extras import needs_extra
from tierwise.classifier.features import EMBEDDING_DIM
from tierwise.router.analytics.quality import JudgedScores, usd_per_quality
from tierwise.router.analytics.report import CACHE_HITS
from tierwise.router.learning.traffic import TrafficSample
from tierwise.router.ledger.reports import SpendSource
from tierwise.router.ledger.sql import SampleQuery
from tierwise.router.pricing import total_usd

SPEND_TARGET = Decimal("0.8")
MAX_CLUSTERS = 100
FIT_LIMIT = 20_000  # beyond this many requests, k-means is fitted on a fixed subsample, then assigns all
PROMPTS_PER_CLUSTER = 3
PROMPT_CHARS = 200
SHARED_HEAD_MIN = 40
_LEDGER_COLUMNS = (
    "request_id",
    "tenant",
    "tier",
    "cache_result",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "saved_usd",
)

Matrix = npt.NDArray[np.float32]


class TrafficLookup(Protocol):
    """The traffic store's read by request id (``SqliteTrafficStore``); called from a worker thread."""

    def get_many(self, request_ids: Sequence[str]) -> dict[str, TrafficSample]: ...


@dataclass(frozen=True, slots=True)
class SpentRequest:
    """One request as the ledger recorded it."""

    request_id: str
    tenant: str
    tier: str
    cache_result: str
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    saved_usd: Decimal


@dataclass(frozen=True, slots=True)
class TierSlice:
    tier: str
    requests: int
    spend_usd: Decimal
    judged: int
    usd_per_quality: Decimal | None


@dataclass(frozen=True, slots=True)
class Cluster:
    rank: int  # 1: the cluster with the most spend
    requests: int
    spend_usd: Decimal
    spend_share: float  # of the clustered spend
    cumulative_share: float  # this cluster and every one ranked before it
    tiers: tuple[TierSlice, ...]  # most requests first
    mean_input_tokens: float
    mean_output_tokens: float
    cache_hit_share: float
    cache_saved_usd: Decimal
    routing_saved_usd: Decimal
    judged: int
    mean_quality: float | None
    usd_per_quality: Decimal | None
    prompts: tuple[str, ...]  # representative prompts of allowing tenants; empty otherwise


@dataclass(frozen=True, slots=True)
class ClusterView:
    k: int  # clusters asked for (fewer when there are fewer distinct embeddings)
    target: Decimal  # the share of spend the leading clusters must make up
    clusters: tuple[Cluster, ...]  # every cluster, most spend first
    top: int  # the smallest number of leading clusters whose spend reaches ``target``
    requests: int  # the window's requests in the ledger
    spend_usd: Decimal
    clustered_requests: int
    clustered_spend_usd: Decimal

    @property
    def leading(self) -> tuple[Cluster, ...]:
        return self.clusters[: self.top]


def spend_set_size(spends: Sequence[Decimal], target: Decimal = SPEND_TARGET) -> int:
    """How many of ``spends`` (sorted, largest first) it takes to reach ``target`` of their sum, exactly."""
    total = total_usd(spends)
    if total <= 0:
        return 0
    running = Decimal(0)
    for count, spend in enumerate(spends, start=1):
        running = total_usd((running, spend))
        if running >= total * target:
            return count
    return len(spends)


def _fit_rows(request_ids: Sequence[str], limit: int) -> npt.NDArray[np.intp]:
    """The rows k-means is fitted on: all, or the ``limit`` with the smallest hash of their id."""
    if len(request_ids) <= limit:
        return np.arange(len(request_ids))
    keys = [hashlib.sha256(r.encode()).digest() for r in request_ids]
    return np.asarray(sorted(sorted(range(len(keys)), key=keys.__getitem__)[:limit]), dtype=np.intp)


def assign_clusters(
    embeddings: Matrix, request_ids: Sequence[str], k: int, *, seed: int = 0, fit_limit: int = FIT_LIMIT
) -> tuple[npt.NDArray[np.intp], Matrix]:
    """k-means labels and centroids; at most as many clusters as distinct embeddings."""
    with needs_extra("analytics", "prompt clusters (k-means)"):
        from sklearn.cluster import KMeans  # a second or so to import: only when clusters are asked for

    fit = embeddings[_fit_rows(request_ids, fit_limit)]
    distinct = int(np.unique(fit, axis=0).shape[0])
    model = KMeans(n_clusters=min(k, distinct), n_init=4, random_state=seed).fit(fit)
    labels = np.asarray(model.predict(embeddings), dtype=np.intp)
    return labels, np.asarray(model.cluster_centers_, dtype=np.float32)


def shared_head(texts: Sequence[str]) -> int:
    """Characters every one of ``texts`` starts with, to a word boundary: a shared few-shot preamble or
    system text, cut from the prompts shown so that what sets them apart fits. 0 when short or none."""
    if len(set(texts)) < 2:
        return 0
    first, last = min(texts), max(texts)  # the sorted extremes share what every text shares
    same = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), len(first))
    head = first[:same]
    cut = max(head.rfind(" "), head.rfind("\n")) + 1
    return cut if cut >= SHARED_HEAD_MIN else 0


def _shown_prompt(text: str, cut: int) -> str:
    rest = " ".join(text[cut:].split())
    flat = "… " + rest if cut and rest else " ".join(text.split())
    return flat if len(flat) <= PROMPT_CHARS else flat[: PROMPT_CHARS - 1] + "…"


def _representatives(
    members: Sequence[int],
    distances: npt.NDArray[np.float32],
    samples: Sequence[TrafficSample],
    prompt_tenants: Collection[str],
    cut: int,
) -> tuple[str, ...]:
    shown: list[str] = []
    for i in sorted(members, key=lambda i: (float(distances[i]), samples[i].request_id)):
        sample = samples[i]
        if sample.prompt is None or sample.tenant not in prompt_tenants:
            continue
        text = _shown_prompt(sample.prompt, cut)
        if text not in shown:
            shown.append(text)
        if len(shown) == PROMPTS_PER_CLUSTER:
            break
    return tuple(shown)


def _tiers(requests: Sequence[SpentRequest], scores: Mapping[str, float]) -> tuple[TierSlice, ...]:
    counts = Counter(r.tier for r in requests)
    slices = []
    for tier, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        mine = [r for r in requests if r.tier == tier]
        judged = [r for r in mine if r.request_id in scores]
        slices.append(
            TierSlice(
                tier,
                count,
                total_usd(r.cost_usd for r in mine),
                len(judged),
                usd_per_quality(
                    total_usd(r.cost_usd for r in judged), [scores[r.request_id] for r in judged]
                ),
            )
        )
    return tuple(slices)


@dataclass(frozen=True, slots=True)
class _Members:
    requests: tuple[SpentRequest, ...]
    prompts: tuple[str, ...]
    spend_usd: Decimal


def _describe(
    rank: int, members: _Members, clustered_spend: Decimal, cumulative: Decimal, scores: Mapping[str, float]
) -> Cluster:
    requests = members.requests
    hits = [r for r in requests if r.cache_result in CACHE_HITS]
    routed = [r for r in requests if r.cache_result not in CACHE_HITS]
    judged = [r for r in requests if r.request_id in scores]
    judged_scores = [scores[r.request_id] for r in judged]
    return Cluster(
        rank=rank,
        requests=len(requests),
        spend_usd=members.spend_usd,
        spend_share=float(members.spend_usd / clustered_spend) if clustered_spend else 0.0,
        cumulative_share=float(cumulative / clustered_spend) if clustered_spend else 0.0,
        tiers=_tiers(requests, scores),
        mean_input_tokens=sum(r.input_tokens for r in requests) / len(requests),
        mean_output_tokens=sum(r.output_tokens for r in requests) / len(requests),
        cache_hit_share=len(hits) / len(requests),
        cache_saved_usd=total_usd(r.saved_usd for r in hits),
        routing_saved_usd=total_usd(r.saved_usd for r in routed),
        judged=len(judged),
        mean_quality=sum(judged_scores) / len(judged_scores) if judged_scores else None,
        usd_per_quality=usd_per_quality(total_usd(r.cost_usd for r in judged), judged_scores),
        prompts=members.prompts,
    )


def describe_clusters(
    requests: Sequence[SpentRequest],
    samples: Mapping[str, TrafficSample],
    scores: Mapping[str, float],
    k: int,
    prompt_tenants: Collection[str],
    *,
    target: Decimal = SPEND_TARGET,
    seed: int = 0,
    fit_limit: int = FIT_LIMIT,
) -> ClusterView:
    """Cluster the requests that have an embedding; ``scores`` are judged quality by request id."""
    vectors = {
        r.request_id: v for r in requests if (v := _embedding_of(samples.get(r.request_id))) is not None
    }
    embedded = sorted((r for r in requests if r.request_id in vectors), key=lambda r: r.request_id)
    clusters: list[_Members] = []
    if embedded:
        ids = [r.request_id for r in embedded]
        chosen = [samples[i] for i in ids]
        matrix = np.stack([vectors[i] for i in ids]).astype(np.float32)
        labels, centroids = assign_clusters(matrix, ids, k, seed=seed, fit_limit=fit_limit)
        distances = np.linalg.norm(matrix - centroids[labels], axis=1).astype(np.float32)
        cut = shared_head([s.prompt for s in chosen if s.prompt is not None and s.tenant in prompt_tenants])
        for label in range(centroids.shape[0]):
            rows = [int(i) for i in np.flatnonzero(labels == label)]
            if rows:
                mine = tuple(embedded[i] for i in rows)
                prompts = _representatives(rows, distances, chosen, prompt_tenants, cut)
                clusters.append(_Members(mine, prompts, total_usd(r.cost_usd for r in mine)))
    # Most spend first; ties by size, then by the smallest request id (labels are arbitrary).
    clusters.sort(key=lambda c: (-c.spend_usd, -len(c.requests), c.requests[0].request_id))
    clustered_spend = total_usd(c.spend_usd for c in clusters)
    described, cumulative = [], Decimal(0)
    for rank, members in enumerate(clusters, start=1):
        cumulative = total_usd((cumulative, members.spend_usd))
        described.append(_describe(rank, members, clustered_spend, cumulative, scores))
    return ClusterView(
        k=k,
        target=target,
        clusters=tuple(described),
        top=spend_set_size([c.spend_usd for c in clusters], target),
        requests=len(requests),
        spend_usd=total_usd(r.cost_usd for r in requests),
        clustered_requests=len(embedded),
        clustered_spend_usd=clustered_spend,
    )


def _embedding_of(sample: TrafficSample | None) -> npt.NDArray[np.float32] | None:
    if sample is None or sample.embedding is None or len(sample.embedding) != 4 * EMBEDDING_DIM:
        return None
    return np.frombuffer(sample.embedding, dtype="<f4")


async def cluster_view(
    source: SpendSource,
    traffic: TrafficLookup | None,
    scores: JudgedScores | None,
    since: float,
    until: float,
    filters: Mapping[str, str] | None,
    k: int,
    prompt_tenants: Collection[str],
) -> ClusterView:
    """The clusters of the ledger's requests in [since, until) matching ``filters``."""
    if not 1 <= k <= MAX_CLUSTERS:
        raise ValueError(f"clusters: must be between 1 and {MAX_CLUSTERS}, got {k}")
    rows = await source.samples(SampleQuery(since, until, (), filters, _LEDGER_COLUMNS))
    requests = [SpentRequest(*row.values) for row in rows]
    samples: dict[str, TrafficSample] = {}
    if traffic is not None and requests:
        samples = await asyncio.to_thread(traffic.get_many, [r.request_id for r in requests])
    judged: dict[str, float] = {}
    if scores is not None and samples:
        # Judgments matter only where a cluster holds the request; keyed by (tenant, request id).
        found = await scores.mean_scores(
            (r.tenant, r.request_id) for r in requests if r.request_id in samples
        )
        judged = {request_id: score for (_, request_id), score in found.items()}
    return await asyncio.to_thread(describe_clusters, requests, samples, judged, k, frozenset(prompt_tenants))
