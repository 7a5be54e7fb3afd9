"""The dashboard's numbers: one JSON document built from the same analytics as ``tierwise report``.

Each panel is an async builder over a ``PanelContext``; the page draws whatever
panels the document holds. A new view is one more builder in ``PANELS`` and one
more drawing function in ``static/dashboard.js``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from tierwise.cache.extras import MissingExtra
from tierwise.router.analytics.clusters import TrafficLookup
from tierwise.router.analytics.quality import JudgedScores
from tierwise.router.analytics.render import jsonable, row_values
from tierwise.router.analytics.report import build_report
from tierwise.router.analytics.sections import clusters_section, forecast_sections, quality_section
from tierwise.router.analytics.timeseries import spend_series
from tierwise.router.config import Config
from tierwise.router.ledger.reports import SpendSource
from tierwise.router.observability.anomaly import find_anomalies

SPEND_DIMENSIONS = ("tenant", "feature", "model")
MAX_ANOMALIES = 50
DEFAULT_CLUSTERS = 8


@dataclass(frozen=True, slots=True)
class PanelContext:
    source: SpendSource
    config: Config
    scores: JudgedScores | None
    since: float
    until: float
    tenant: str | None  # None: every tenant (an admin key)
    traffic: TrafficLookup | None = None  # the traffic samples' embeddings (the clusters view)
    clusters: int = DEFAULT_CLUSTERS

    @property
    def filters(self) -> dict[str, str]:
        return {"tenant": self.tenant} if self.tenant else {}


Panel = Callable[[PanelContext], Awaitable[object]]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def _summary(ctx: PanelContext) -> object:
    """The window's totals (as ``tierwise report`` prints them) and p95 latency / TTFT per tier."""
    report = await build_report(ctx.source, ctx.since, ctx.until, ["tier"], ctx.filters)
    return {
        "totals": jsonable(row_values(report.total)),
        "tiers": [{"tier": g.group["tier"], **jsonable(row_values(g))} for g in report.groups],
    }


async def _spend_over_time(ctx: PanelContext) -> object:
    out: dict[str, object] = {}
    for dim in SPEND_DIMENSIONS:
        series = await spend_series(ctx.source, ctx.since, ctx.until, dim, ctx.filters)
        out[dim] = {"bucket": series.bucket, "labels": list(series.labels), "series": series.floats()}
        if dim == SPEND_DIMENSIONS[0]:
            pairs = zip(series.cache_hits, series.requests, strict=True)
            out["cache_hit_rate"] = [hits / n if n else None for hits, n in pairs]
    return out


async def _forecast(ctx: PanelContext) -> object:
    sections = await forecast_sections(ctx.source, ctx.config.budgets, ctx.until, ctx.tenant)
    return {s.key: s.data for s in sections}


async def _anomalies(ctx: PanelContext) -> object:
    if not ctx.config.anomaly.enabled:
        return []
    found = await find_anomalies(ctx.source, ctx.config.anomaly, ctx.since, ctx.until, tenant=ctx.tenant)
    return [
        {
            "tenant": a.tenant,
            "feature": "*" if a.feature is None else a.feature,
            "hour": a.hour.isoformat().replace("+00:00", "Z"),
            "cost_usd": round(a.cost_usd, 6),
            "baseline_usd": round(a.baseline_usd, 6),
            "z": round(a.z, 1),
        }
        for a in found[-MAX_ANOMALIES:]
    ]


async def _quality(ctx: PanelContext) -> object:
    if ctx.scores is None:
        return []
    section = await quality_section(ctx.source, ctx.scores, ctx.since, ctx.until, ctx.tenant)
    return section.data


async def _clusters(ctx: PanelContext) -> object:
    try:
        section = await clusters_section(
            ctx.source, ctx.traffic, ctx.scores, ctx.config, ctx.since, ctx.until, ctx.tenant, ctx.clusters
        )
    except MissingExtra as exc:  # a core install serves the rest of the dashboard without scikit-learn
        return {"unavailable": str(exc), "clusters": []}
    return section.data


PANELS: tuple[tuple[str, Panel], ...] = (
    ("summary", _summary),
    ("spend", _spend_over_time),
    ("forecast", _forecast),
    ("anomalies", _anomalies),
    ("quality", _quality),
    ("clusters", _clusters),
)


async def dashboard_data(ctx: PanelContext) -> dict[str, object]:
    data: dict[str, object] = {
        "since": _iso(ctx.since),
        "until": _iso(ctx.until),
        "tenant": ctx.tenant or "*",
    }
    for key, build in PANELS:
        data[key] = await build(ctx)
    return data
