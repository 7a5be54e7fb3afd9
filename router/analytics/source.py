"""What the analytics read: the ledger's grouped sums and its per-request samples, over a window.

A running ``SpendLedger`` (the dashboard) and ``SinkReports`` over a bare store
(``open_sink``, for the command line) both provide these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from tierwise.router.config import Config, ConfigError
from tierwise.router.ledger.spend_ledger import SpendSink
from tierwise.router.ledger.sql import Sample
from tierwise.router.observability.anomaly import SpendReports


class SpendSource(SpendReports, Protocol):
    async def samples(
        self,
        since: float,
        until: float,
        by: Sequence[str],
        filters: Mapping[str, str] | None,
        columns: Sequence[str],
    ) -> list[Sample]: ...


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([hdw])\s*$")
_UNIT_S = {"h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float) -> float:
    """``36h``, ``7d``, ``2w`` before ``now``, or an ISO date / time (UTC unless it names a zone)."""
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNIT_S[relative.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since: expected e.g. 36h, 7d, 2w or an ISO date, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def open_sink(config: Config) -> SpendSink:
    """The spend store the config's ledger writes to, opened for reading reports."""
    if not config.ledger.enabled:
        raise ConfigError("the spend ledger is off (ledger.enabled: false): there is no spend to read")
    if config.ledger.postgres_dsn:
        from tierwise.router.ledger.postgres_sink import PostgresSpendSink

        return PostgresSpendSink(config.ledger.postgres_dsn)
    from tierwise.router.ledger.sqlite_sink import SqliteSpendSink

    return SqliteSpendSink(config.store.path / "spend.sqlite3")
