"""The optional sections of a report beyond the groups: cost per quality, the forecast, the clusters.

Each builder reads the ledger (and, for quality and clusters, the judgments; for
clusters, the traffic samples' embeddings) and returns a ``Section``: a rich table
for the terminal and the same numbers as JSON. A new view is one more builder here,
added to the CLI's options and the dashboard's data.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from tierwise.router.analytics.clusters import TrafficLookup, cluster_view
from tierwise.router.analytics.clusters_table import clusters_table, view_dict
from tierwise.router.analytics.forecast import (
    BudgetProjection,
    MonthEndForecast,
    daily_spend,
    month_end,
    project_budget,
    tenants_of,
)
from tierwise.router.analytics.quality import JudgedScores, cost_per_quality, quality_table
from tierwise.router.analytics.render import Section
from tierwise.router.config import BudgetConfig, Config
from tierwise.router.ledger.reports import SpendSource


async def quality_section(
    source: SpendSource, scores: JudgedScores, since: float, until: float, tenant: str | None
) -> Section:
    rows = await cost_per_quality(source, scores, since, until, {"tenant": tenant} if tenant else None)
    return Section("quality", quality_table(rows), [r.as_dict() for r in rows])


def _forecast_table(forecasts: Sequence[MonthEndForecast], level: float) -> Table:
    table = Table(title=f"month-end spend forecast ({level:.0%} interval)")
    for name in ("tenant", "month to date", "forecast", "low", "high", "trend / day", "model", "days"):
        table.add_column(name, justify="left" if name in ("tenant", "model") else "right")
    for f in forecasts:
        table.add_row(
            f.tenant,
            str(f.month_to_date_usd),
            str(f.forecast_usd),
            str(f.low_usd),
            str(f.high_usd),
            str(f.daily_trend_usd),
            f.method,
            str(f.history_days),
        )
    return table


def _budget_table(projections: Sequence[BudgetProjection]) -> Table:
    table = Table(title="budgets: burn and projected run-out")
    for name in ("budget", "limit", "used", "projected", "runs out"):
        table.add_column(name, justify="left" if name == "budget" else "right")
    for p in projections:
        out = p.runs_out.isoformat() if p.runs_out else "not this " + p.window
        table.add_row(p.budget, str(p.limit_usd), str(p.used_usd), str(p.projected_usd), out)
    return table


async def forecast_sections(
    source: SpendSource,
    budgets: Sequence[BudgetConfig],
    now: float,
    tenant: str | None,
    *,
    history_days: int = 28,
    level: float = 0.9,
) -> list[Section]:
    """The month-end forecast per tenant and, when budgets are configured, their projected run-out."""
    spend = await daily_spend(source, now, history_days=history_days, tenant=tenant)
    forecasts = [month_end(spend, t, level) for t in tenants_of(spend)]
    projections = [
        p
        for b in budgets
        if tenant is None or b.tenant == tenant
        if (p := project_budget(spend, b)) is not None
    ]
    sections = [Section("forecast", _forecast_table(forecasts, level), [f.as_dict() for f in forecasts])]
    if projections:
        sections.append(Section("budgets", _budget_table(projections), [p.as_dict() for p in projections]))
    return sections


async def clusters_section(
    source: SpendSource,
    traffic: TrafficLookup | None,
    scores: JudgedScores | None,
    config: Config,
    since: float,
    until: float,
    tenant: str | None,
    k: int,
) -> Section:
    """Where the money goes: ``k`` prompt clusters, the fewest that make 80 % of spend first."""
    view = await cluster_view(
        source,
        traffic,
        scores,
        since,
        until,
        {"tenant": tenant} if tenant else None,
        k,
        config.learning.traffic.store_prompts_tenants,
    )
    return Section("clusters", clusters_table(view), view_dict(view))
