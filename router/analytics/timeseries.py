"""Spend (and cache hits) per time bucket, split by one dimension: the plot's and the dashboard's series."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from tierwise.router.ledger.reports import SpendReports
from tierwise.router.pricing import total_usd

_FORMATS = {"day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H:00Z"}  # the ledger's bucket labels (UTC)
_STEP_S = {"day": 86400, "hour": 3600}
MAX_HOURLY_SPAN_S = 2 * 86400


def bucket_for(since: float, until: float) -> str:
    """Hours for a window of two days or less, days otherwise."""
    return "hour" if until - since <= MAX_HOURLY_SPAN_S else "day"


def bucket_labels(since: float, until: float, bucket: str) -> list[str]:
    step = _STEP_S[bucket]
    first, last = int(since // step), int((until - 1e-9) // step)
    return [datetime.fromtimestamp(i * step, UTC).strftime(_FORMATS[bucket]) for i in range(first, last + 1)]


@dataclass(frozen=True, slots=True)
class SpendSeries:
    dimension: str  # "" : one series, "all"
    bucket: str  # day | hour
    labels: tuple[str, ...]
    spend: Mapping[str, tuple[Decimal, ...]]  # dimension value -> spend per bucket (exact)
    requests: tuple[int, ...]  # all requests per bucket
    cache_hits: tuple[int, ...]

    def floats(self) -> dict[str, list[float]]:
        return {k: [float(v) for v in values] for k, values in self.spend.items()}


async def spend_series(
    reports: SpendReports,
    since: float,
    until: float,
    dimension: str = "",
    filters: Mapping[str, str] | None = None,
    bucket: str | None = None,
) -> SpendSeries:
    bucket = bucket or bucket_for(since, until)
    labels = bucket_labels(since, until, bucket)
    by = [dimension, bucket] if dimension else [bucket]
    rows = await reports.totals(since, until, by, filters)
    spend: dict[str, dict[str, list[Decimal]]] = defaultdict(lambda: defaultdict(list))
    requests: dict[str, int] = defaultdict(int)
    hits: dict[str, int] = defaultdict(int)
    for row in rows:
        name = row.group[dimension] if dimension else "all"
        label = row.group[bucket]
        spend[name][label].append(row.cost_usd)
        requests[label] += row.requests
        hits[label] += row.cache_hits
    return SpendSeries(
        dimension,
        bucket,
        tuple(labels),
        {
            name: tuple(total_usd(per.get(label, [])) for label in labels)
            for name, per in sorted(spend.items())
        },
        tuple(requests[label] for label in labels),
        tuple(hits[label] for label in labels),
    )
