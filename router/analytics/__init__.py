"""Cost analytics over the spend ledger: chargeback reports, cost per unit of quality, forecasts,
spend clusters and the built-in dashboard page. ``tierwise report`` and ``/dashboard`` read their
numbers from the same functions here, so the two always agree."""

from tierwise.router.analytics.clusters import MAX_CLUSTERS
from tierwise.router.analytics.dashboard_http import Dashboard
from tierwise.router.analytics.quality import JudgedScores
from tierwise.router.analytics.render import Section, groups_csv, groups_tables, report_json
from tierwise.router.analytics.report import build_report
from tierwise.router.analytics.sections import clusters_section, forecast_sections, quality_section
from tierwise.router.analytics.source import open_sink, parse_since
from tierwise.router.analytics.timeseries import SpendSeries, spend_series

__all__ = [
    "MAX_CLUSTERS",
    "Dashboard",
    "JudgedScores",
    "Section",
    "SpendSeries",
    "build_report",
    "clusters_section",
    "forecast_sections",
    "groups_csv",
    "groups_tables",
    "open_sink",
    "parse_since",
    "quality_section",
    "report_json",
    "spend_series",
]
