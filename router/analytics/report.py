"""The chargeback report: per group of any dimensions, volume, money, savings, reliability and latency.

Money comes from the store's exact sums (Decimal), so a report's totals equal the
per-request records to the last digit. Savings are split by where they came from:
a cache hit saves what its tier would have cost (``cache``); a routed call saves the
difference to the strongest tier (``routing``). Net savings subtract what tierwise's
own compute cost (``router_cost_usd``). Latency percentiles are computed from the
per-request samples, as SQL has no portable percentile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from tierwise.router.ledger.reports import SpendSource
from tierwise.router.ledger.sql import SampleQuery, SpendTotals
from tierwise.router.pricing import total_usd

CACHE_HITS = ("exact", "semantic")
_LATENCY_COLUMNS = ("total_ms", "ttft_ms", "status")

GroupKey = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float | None
    p95: float | None
    p99: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        if not values:
            return cls(None, None, None)
        p50, p95, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 95, 99])
        return cls(float(p50), float(p95), float(p99))


class CacheHitRate:
    """The cache hit rate of a summary that counts its ``requests`` and their ``cache_hits``."""

    __slots__ = ()
    requests: int
    cache_hits: int

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class GroupReport(CacheHitRate):
    group: Mapping[str, str]  # dimension -> value ("" when the request had none)
    requests: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    spend_usd: Decimal
    cache_saved_usd: Decimal
    routing_saved_usd: Decimal
    router_cost_usd: Decimal
    errors: int
    fallbacks: int
    cache_hits: int
    unfamiliar: int  # routed on the safe prior: the classifier found the prompt unfamiliar
    latency_ms: Percentiles  # every request's total latency, as its caller saw it
    ttft_ms: Percentiles  # successful requests that produced a first token

    @property
    def saved_usd(self) -> Decimal:
        return total_usd((self.cache_saved_usd, self.routing_saved_usd))

    @property
    def net_saved_usd(self) -> Decimal:
        return total_usd((self.saved_usd, -self.router_cost_usd))

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.requests if self.requests else 0.0

    @property
    def unfamiliar_share(self) -> float:
        return self.unfamiliar / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class Report:
    since: float
    until: float
    by: tuple[str, ...]
    filters: Mapping[str, str]
    groups: tuple[GroupReport, ...]
    total: GroupReport


@dataclass
class _Sums:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    errors: int = 0
    fallbacks: int = 0
    cache_hits: int = 0
    unfamiliar: int = 0

    def __post_init__(self) -> None:
        self.spend: list[Decimal] = []
        self.cache_saved: list[Decimal] = []
        self.routing_saved: list[Decimal] = []
        self.router_cost: list[Decimal] = []
        self.latency: list[float] = []
        self.ttft: list[float] = []

    def add(self, row: SpendTotals, cache_result: str) -> None:
        self.requests += row.requests
        self.input_tokens += row.input_tokens
        self.output_tokens += row.output_tokens
        self.cached_input_tokens += row.cached_input_tokens
        self.errors += row.errors
        self.fallbacks += row.fallbacks
        self.cache_hits += row.cache_hits
        self.unfamiliar += row.unfamiliar
        self.spend.append(row.cost_usd)
        (self.cache_saved if cache_result in CACHE_HITS else self.routing_saved).append(row.saved_usd)
        self.router_cost.append(row.router_cost_usd)

    def report(self, group: Mapping[str, str]) -> GroupReport:
        return GroupReport(
            group=dict(group),
            requests=self.requests,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_input_tokens=self.cached_input_tokens,
            spend_usd=total_usd(self.spend),
            cache_saved_usd=total_usd(self.cache_saved),
            routing_saved_usd=total_usd(self.routing_saved),
            router_cost_usd=total_usd(self.router_cost),
            errors=self.errors,
            fallbacks=self.fallbacks,
            cache_hits=self.cache_hits,
            unfamiliar=self.unfamiliar,
            latency_ms=Percentiles.of(self.latency),
            ttft_ms=Percentiles.of(self.ttft),
        )


def _key(group: Mapping[str, str], by: Iterable[str]) -> GroupKey:
    return tuple(group[d] for d in by)


async def build_report(
    source: SpendSource,
    since: float,
    until: float,
    by: Sequence[str] = (),
    filters: Mapping[str, str] | None = None,
) -> Report:
    """Requests in [since, until) grouped by ``by`` (columns, day / hour, or tag keys), each filter matching.

    Two store queries: the sums grouped by ``by`` plus the cache result (to split the
    savings), and the per-request latencies grouped by ``by``.
    """
    by = tuple(by)
    filters = dict(filters or {})
    split = by if "cache_result" in by else (*by, "cache_result")
    rows = await source.totals(since, until, split, filters)
    samples = await source.samples(SampleQuery(since, until, by, filters, _LATENCY_COLUMNS))
    groups: dict[GroupKey, _Sums] = {}
    total = _Sums()
    for row in rows:
        for sums in (groups.setdefault(_key(row.group, by), _Sums()), total):
            sums.add(row, row.group["cache_result"])
    for sample in samples:
        total_ms, ttft_ms, status = sample.values
        for sums in (groups.setdefault(_key(sample.group, by), _Sums()), total):
            sums.latency.append(float(total_ms))
            if status == "OK" and ttft_ms > 0:
                sums.ttft.append(float(ttft_ms))
    reports = tuple(groups[k].report(dict(zip(by, k, strict=True))) for k in sorted(groups))
    return Report(since, until, by, filters, reports, total.report({d: "*" for d in by}))
