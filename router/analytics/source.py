"""Where the command line's analytics read from: the spend store (``open_sink``, wrapped in
``SinkReports``) over a window that starts at ``parse_since``; the dashboard reads the running
``SpendLedger`` instead (both are a ``ledger.reports.SpendSource``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from tierwise.router.config import Config, ConfigError
from tierwise.router.ledger.spend_ledger import SpendSink, open_spend_sink

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
    return open_spend_sink(config)
