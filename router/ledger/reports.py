"""The spend ledger's report queries, declared once for every reader.

A store answers them in the calling thread (``SpendQueries``); ``SinkReports``
runs a store's answers off the event loop, and ``SpendLedger`` is built on it, so
the analytics await either through the ``SpendReports`` / ``SpendSource`` protocols.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Protocol

from tierwise.router.ledger.sql import Sample, SampleQuery, SpendTotals


class SpendQueries(Protocol):
    """A store's report queries; they block, so async code reads them through ``SinkReports``."""

    def totals(
        self, since: float, until: float, by: Sequence[str] = (), filters: Mapping[str, str] | None = None
    ) -> list[SpendTotals]: ...

    def samples(self, query: SampleQuery) -> list[Sample]:
        """Per-request values with each request's group (see ``ledger.sql.samples_sql``)."""
        ...


class SpendReports(Protocol):
    """The grouped sums the anomaly checker and the forecasts await."""

    async def totals(
        self, since: float, until: float, by: Sequence[str] = (), filters: Mapping[str, str] | None = None
    ) -> list[SpendTotals]: ...


class SpendSource(SpendReports, Protocol):
    """What the analytics read: the grouped sums and the per-request samples behind percentiles."""

    async def samples(self, query: SampleQuery) -> list[Sample]: ...


class SinkReports:
    """A spend store's report queries off the event loop; alone over a bare store (the CLI), or as
    the base of ``SpendLedger`` (the server)."""

    def __init__(self, sink: SpendQueries) -> None:
        self.sink = sink

    async def totals(
        self, since: float, until: float, by: Sequence[str] = (), filters: Mapping[str, str] | None = None
    ) -> list[SpendTotals]:
        """Stored spend in [since, until) grouped by ``by`` (see ``ledger.sql.parse_dimension``)."""
        return await asyncio.to_thread(self.sink.totals, since, until, by, filters)

    async def samples(self, query: SampleQuery) -> list[Sample]:
        """Stored per-request values, grouped as ``totals`` groups."""
        return await asyncio.to_thread(self.sink.samples, query)
