"""``tierwise report``: the chargeback report from the spend store the config names."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NamedTuple

import typer
from rich.console import Console

from tierwise.router.analytics.clusters import MAX_CLUSTERS
from tierwise.router.analytics.quality import JudgedScores
from tierwise.router.analytics.render import Section, groups_csv, groups_tables, report_json
from tierwise.router.analytics.report import build_report
from tierwise.router.analytics.sections import clusters_section, forecast_sections, quality_section
from tierwise.router.analytics.source import open_sink, parse_since
from tierwise.router.analytics.timeseries import SpendSeries, spend_series
from tierwise.router.config import Config, load_config
from tierwise.router.feedback.factory import feedback_table_exists, open_feedback_table
from tierwise.router.learning.traffic_sqlite import SqliteTrafficStore
from tierwise.router.ledger.reports import SinkReports
from tierwise.router.ledger.sql import parse_dimension


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class _NoJudgments:
    async def mean_scores(self, requests: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]:
        return {}


def _dimensions(text: str) -> tuple[str, ...]:
    dims = tuple(d.strip() for d in text.split(",") if d.strip())
    for dim in dims:
        parse_dimension(dim)  # raises naming the bad one
    if len(set(dims)) != len(dims):
        raise ValueError(f"group by each dimension once, got {text!r}")
    return dims


def _traffic_store(cfg: Config) -> SqliteTrafficStore | None:
    path = cfg.store.path / "traffic.sqlite3"
    return SqliteTrafficStore(path) if path.exists() else None


async def _sections(
    cfg: Config,
    reports: SinkReports,
    since: float,
    until: float,
    tenant: str | None,
    quality: bool,
    forecast: bool,
    clusters: int | None,
) -> list[Section]:
    sections = []
    judged = quality or clusters is not None
    store = open_feedback_table(cfg) if judged and feedback_table_exists(cfg) else None
    scores: JudgedScores = _NoJudgments() if store is None else store
    try:
        if quality:
            sections.append(await quality_section(reports, scores, since, until, tenant))
        if clusters is not None:
            traffic = _traffic_store(cfg)
            try:
                sections.append(
                    await clusters_section(reports, traffic, scores, cfg, since, until, tenant, clusters)
                )
            finally:
                if traffic is not None:
                    traffic.close()
    finally:
        if store is not None:
            await store.aclose()
    if forecast:
        sections += await forecast_sections(reports, cfg.budgets, time.time(), tenant)
    return sections


class SpendWindow(NamedTuple):
    """A spend command's config and where its window starts, read from its options at ``now``."""

    config: Config
    start: float
    now: float


@contextmanager
def spend_window(config: Path, since: str) -> Iterator[SpendWindow]:
    """Load the config and ``--since`` for a command that reads the spend store. A ``ValueError``
    (``ConfigError`` included) here or in the command's own checks inside the block is the user's
    to fix: its message on stderr and exit code 2, not a traceback."""
    now = time.time()
    try:
        cfg = load_config(config)
        yield SpendWindow(cfg, parse_since(since, now), now)
    except ValueError as exc:  # ConfigError included
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def report(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config file")],
    since: Annotated[str, typer.Option(help="start: 36h, 7d, 2w (before now) or an ISO date / time")] = "7d",
    until: Annotated[
        str | None, typer.Option(help="end (exclusive), same forms as --since; default now")
    ] = None,
    by: Annotated[
        str,
        typer.Option(
            help="comma list of tenant, feature, key (the API key's name), tier, model, arm, day, hour or any metadata tag key"
        ),
    ] = "tenant",
    fmt: Annotated[
        Format, typer.Option("--format", help="table, csv (the chargeback export) or json")
    ] = Format.table,
    plot: Annotated[
        Path | None, typer.Option(help="write a PNG of spend over time stacked by the first --by")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    quality: Annotated[
        bool, typer.Option("--quality", help="add cost per unit of judged quality by tier and arm")
    ] = False,
    forecast: Annotated[
        bool, typer.Option("--forecast", help="add the month-end forecast per tenant and budget run-out days")
    ] = False,
    clusters: Annotated[
        int | None,
        typer.Option(
            "--clusters",
            min=1,
            max=MAX_CLUSTERS,
            help="add where the money goes: K prompt clusters (k-means over stored embeddings), "
            "the fewest that make 80% of spend",
        ),
    ] = None,
) -> None:
    """Spend, savings, errors and latency grouped by any dimensions, from the spend ledger."""
    with spend_window(config, since) as (cfg, start, now):
        end = now if until is None else parse_since(until, now)
        if end <= start:
            raise ValueError("--until: must be after --since")
        try:
            dims = _dimensions(by)
        except ValueError as exc:
            raise ValueError(f"--by: {exc}") from None
        if fmt is Format.csv and (quality or forecast or clusters is not None):
            raise ValueError(
                "--format csv is the per-group export; "
                "use table or json with --quality / --forecast / --clusters"
            )
        sink = open_sink(cfg)
    reports = SinkReports(sink)
    filters = {"tenant": tenant} if tenant else {}

    async def build() -> None:
        result = await build_report(reports, start, end, dims, filters)
        sections = await _sections(cfg, reports, start, end, tenant, quality, forecast, clusters)
        if fmt is Format.csv:
            typer.echo(groups_csv(result), nl=False)
        elif fmt is Format.json:
            typer.echo(report_json(result, sections))
        else:
            console = Console()
            for table in [*groups_tables(result), *(s.table for s in sections)]:
                console.print(table)
        if plot is not None:
            series = await spend_series(reports, start, end, dims[0] if dims else "", filters)
            title = f"spend by {dims[0]}" if dims else "spend"
            await asyncio.to_thread(_plot, series, plot, title)
            Console(stderr=True).print(f"plot written to {plot}")

    try:
        asyncio.run(build())
    finally:
        sink.close()


def _plot(series: SpendSeries, path: Path, title: str) -> None:
    from tierwise.training.cli.report_plot import plot_spend  # matplotlib only when a plot is asked for

    plot_spend(series, path, title)
