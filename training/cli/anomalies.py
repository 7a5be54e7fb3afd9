"""``tierwise anomalies``: the hours whose spend was flagged, read from the spend store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tierwise.router.analytics.source import open_sink
from tierwise.router.ledger.reports import SinkReports
from tierwise.router.observability.anomaly import Anomaly, find_anomalies
from tierwise.training.cli.report import spend_window


def anomaly_table(found: list[Anomaly]) -> Table:
    table = Table(title=f"{len(found)} flagged hour(s)")
    for name in ("tenant", "feature", "hour (UTC)", "cost USD", "baseline USD", "z", "compared with"):
        table.add_column(name, justify="right" if name in ("cost USD", "baseline USD", "z") else "left")
    for a in found:
        table.add_row(
            a.tenant,
            "*" if a.feature is None else a.feature or "(none)",
            f"{a.hour:%Y-%m-%d %H:00}",
            f"{a.cost_usd:.4f}",
            f"{a.baseline_usd:.4f}",
            f"{a.z:.1f}",
            "same hour, earlier weeks" if a.seasonal else "recent hours",
        )
    return table


def anomalies(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config file")],
    since: Annotated[str, typer.Option(help="first hour to score: 36h, 7d, 2w or an ISO date")] = "7d",
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="z-score to flag above (default: anomaly.threshold_z)")
    ] = None,
    by_feature: Annotated[
        bool | None, typer.Option("--by-feature/--no-by-feature", help="also score each tenant + feature")
    ] = None,
) -> None:
    """Print the hours whose spend was far above the tenant's (or feature's) usual spend."""
    with spend_window(config, since) as (cfg, start, now):
        settings = cfg.anomaly
        update: dict[str, object] = {}
        if threshold is not None:
            if threshold <= 0:
                raise ValueError("--threshold must be positive")
            update["threshold_z"] = threshold
        if by_feature is not None:
            update["by_feature"] = by_feature
        settings = settings.model_copy(update=update)
        sink = open_sink(cfg)
    try:
        found = asyncio.run(find_anomalies(SinkReports(sink), settings, start, now, tenant=tenant))
    finally:
        sink.close()
    console = Console()
    if not found:
        since_text = datetime.fromtimestamp(start // 3600 * 3600, UTC)
        console.print(f"no cost anomalies since {since_text:%Y-%m-%d %H:00} UTC")
        return
    console.print(anomaly_table(found))
