"""The clusters view as JSON and as a rich table; the table prints the JSON's values."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table

from tierwise.router.analytics.clusters import Cluster, ClusterView, TierSlice
from tierwise.router.analytics.render import cell, jsonable
from tierwise.router.pricing import total_usd


def _round(value: float | None, places: int = 4) -> float | None:
    return None if value is None else round(value, places)


def _tier_dict(t: TierSlice) -> dict[str, object]:
    return jsonable(
        {
            "tier": t.tier,
            "requests": t.requests,
            "spend_usd": t.spend_usd,
            "judged": t.judged,
            "usd_per_quality": t.usd_per_quality,
        }
    )


def cluster_dict(c: Cluster, leading: bool) -> dict[str, object]:
    return {
        **jsonable(
            {
                "rank": c.rank,
                "leading": leading,  # one of the fewest clusters that make the target share of spend
                "requests": c.requests,
                "spend_usd": c.spend_usd,
                "spend_share": _round(c.spend_share),
                "cumulative_share": _round(c.cumulative_share),
                "mean_input_tokens": _round(c.mean_input_tokens, 1),
                "mean_output_tokens": _round(c.mean_output_tokens, 1),
                "cache_hit_share": _round(c.cache_hit_share),
                "cache_saved_usd": c.cache_saved_usd,
                "routing_saved_usd": c.routing_saved_usd,
                "judged": c.judged,
                "mean_quality": _round(c.mean_quality),
                "usd_per_quality": c.usd_per_quality,
            }
        ),
        "tiers": [_tier_dict(t) for t in c.tiers],
        "prompts": list(c.prompts),
    }


def view_dict(view: ClusterView) -> dict[str, object]:
    return {
        **jsonable(
            {
                "k": view.k,
                "target_share": float(view.target),
                "leading": view.top,
                "requests": view.requests,
                "spend_usd": view.spend_usd,
                "clustered_requests": view.clustered_requests,
                "clustered_spend_usd": view.clustered_spend_usd,
            }
        ),
        "clusters": [cluster_dict(c, c.rank <= view.top) for c in view.clusters],
    }


_COLUMNS = (
    ("cluster", "rank"),
    ("requests", "requests"),
    ("spend_usd", "spend_usd"),
    ("share", "spend_share"),
    ("cumulative", "cumulative_share"),
    ("mean in tokens", "mean_input_tokens"),
    ("mean out tokens", "mean_output_tokens"),
    ("cache hit share", "cache_hit_share"),
    ("cache_saved_usd", "cache_saved_usd"),
    ("routing_saved_usd", "routing_saved_usd"),
    ("judged", "judged"),
    ("mean quality", "mean_quality"),
    ("usd_per_quality", "usd_per_quality"),
)


def _tier_mix(tiers: tuple[TierSlice, ...], key: str) -> str:
    rows = [_tier_dict(t) for t in tiers]
    return "\n".join(f"{t['tier'] or '(none)'} {cell(t[key])}" for t in rows if t[key] is not None)


def _prompts_table(view: ClusterView) -> Table:
    table = Table(title="representative prompts (nearest each centroid; only of tenants that allow it)")
    table.add_column("cluster", justify="right")
    table.add_column("prompts", overflow="fold")
    for c in view.leading:
        if c.prompts:
            table.add_row(str(c.rank), "\n".join(f"· {p}" for p in c.prompts))
    return table


def clusters_table(view: ClusterView) -> RenderableType:
    """The leading clusters (those that make the target share of spend), then the rest as one row;
    below, their representative prompts where a tenant allows showing them."""
    table = Table(
        title=f"where the money goes: the {view.top} of {len(view.clusters)} prompt clusters "
        f"that make {view.target:.0%} of spend",
        caption=f"clustered {view.clustered_requests} of {view.requests} requests "
        f"({cell(view.clustered_spend_usd)} of {cell(view.spend_usd)} USD); "
        "the others have no stored embedding",
    )
    for label, _ in _COLUMNS[:5]:
        table.add_column(label, justify="right", overflow="fold")
    table.add_column("tier: requests", overflow="fold")
    table.add_column("tier: usd_per_quality", overflow="fold")
    for label, _ in _COLUMNS[5:]:
        table.add_column(label, justify="right", overflow="fold")
    for c in view.leading:
        data = cluster_dict(c, leading=True)
        values = [cell(data[key]) for _, key in _COLUMNS]
        table.add_row(
            *values[:5], _tier_mix(c.tiers, "requests"), _tier_mix(c.tiers, "usd_per_quality"), *values[5:]
        )
    rest = view.clusters[view.top :]
    if rest:
        spend = total_usd(c.spend_usd for c in rest)
        share = float(spend / view.clustered_spend_usd) if view.clustered_spend_usd else 0.0
        table.add_row(
            f"{len(rest)} others", str(sum(c.requests for c in rest)), cell(spend), cell(_round(share))
        )
    if not any(c.prompts for c in view.leading):
        return table
    return Group(table, _prompts_table(view))
