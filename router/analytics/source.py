"""What the analytics read: the ledger's grouped sums and its per-request samples.

A running ``SpendLedger`` (the dashboard) and ``SinkReports`` over a bare store
(the CLI) both provide these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from router.anomaly import SpendReports
from router.ledger_sql import Sample


class SpendSource(SpendReports, Protocol):
    async def samples(
        self,
        since: float,
        until: float,
        by: Sequence[str],
        filters: Mapping[str, str] | None,
        columns: Sequence[str],
    ) -> list[Sample]: ...
