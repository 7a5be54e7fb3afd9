"""The demo's closing check: the costs the responses carried, the ledger's spend records and the
``tierwise_cost_usd`` metric add up to each other, to the cent, by tenant, feature and tag.

The responses are summed exactly (Decimal, from ``cost_usd_exact``); the ledger sums exactly in
SQL; Prometheus counters are floats, so the metric is compared after rounding to the cent.
Metrics carry no tag labels (tags are unbounded), so tags reconcile responses against the ledger.
"""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from tierwise.router.ledger.sqlite_sink import SqliteSpendSink

CENT = Decimal("0.01")
COST_METRIC = "tierwise_cost_usd"
METRIC_DIMENSIONS = ("tenant", "feature")


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


@dataclass
class ResponseCosts:
    """Per dimension, per value: the sum of the answered responses' exact costs."""

    dimensions: Sequence[str]
    sums: dict[str, dict[str, Decimal]] = field(default_factory=dict)

    def add(self, values: Mapping[str, str], cost: Decimal) -> None:
        for dim in self.dimensions:
            by_value = self.sums.setdefault(dim, defaultdict(Decimal))
            by_value[values.get(dim, "")] += cost


def scrape_costs(
    metrics_url: str, dimensions: Sequence[str] = METRIC_DIMENSIONS
) -> dict[str, dict[str, Decimal]]:
    """``tierwise_cost_usd_total`` from a running server's /metrics, summed per dimension value."""
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    sums: dict[str, dict[str, Decimal]] = {dim: defaultdict(Decimal) for dim in dimensions}
    for family in text_string_to_metric_families(text):
        if family.name != COST_METRIC:
            continue
        for sample in family.samples:
            if sample.name != f"{COST_METRIC}_total":
                continue
            for dim in dimensions:
                sums[dim][sample.labels.get(dim, "")] += Decimal(repr(sample.value))
    return sums


def ledger_costs(ledger_file: Path, dimensions: Sequence[str]) -> dict[str, dict[str, Decimal]]:
    """The ledger's exact sums per dimension value (every record ever written to this file)."""
    sink = SqliteSpendSink(ledger_file)
    try:
        return {
            dim: {row.group[dim]: row.cost_usd for row in sink.totals(0.0, time.time() + 3600, [dim])}
            for dim in dimensions
        }
    finally:
        sink.close()


@dataclass(frozen=True, slots=True)
class Mismatch:
    dimension: str
    value: str
    detail: str


def reconcile(
    responses: ResponseCosts,
    ledger: Mapping[str, Mapping[str, Decimal]],
    metrics: Mapping[str, Mapping[str, Decimal]],
) -> tuple[Table, list[Mismatch]]:
    table = Table(title="reconciliation: responses = spend records = metrics (USD)")
    for column in ("dimension", "value", "responses", "ledger", "metrics", "agree"):
        table.add_column(column, justify="right" if column in ("responses", "ledger", "metrics") else "left")
    mismatches: list[Mismatch] = []
    for dim in responses.dimensions:
        answered = responses.sums.get(dim, {})
        stored = ledger.get(dim, {})
        scraped = metrics.get(dim)
        for value in sorted(set(answered) | {v for v, c in stored.items() if c}):
            mine, theirs = answered.get(value, Decimal(0)), stored.get(value, Decimal(0))
            metric = None if scraped is None else scraped.get(value, Decimal(0))
            # The ledger sums the same Decimals the responses carried: equal exactly, not only to the cent.
            agree = mine == theirs and (metric is None or cents(metric) == cents(mine))
            if not agree:
                mismatches.append(
                    Mismatch(dim, value, f"responses {mine}, ledger {theirs}, metrics {metric}")
                )
            table.add_row(
                dim,
                value or "(none)",
                f"{mine:.6f}",
                f"{theirs:.6f}",
                "(no label)" if metric is None else f"{metric:.6f}",
                "yes" if agree else "NO",
            )
    return table, mismatches
