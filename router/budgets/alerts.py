"""Budget alerts: a log line, in-process listeners (metrics), and an optional webhook POST.

Whether an alert fires at all is decided by the budget store's once-per-period
marks; this module only delivers. Webhook posts run as background tasks off
the request path, and a failing webhook or listener is logged, never raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import httpx

from tierwise.router.budgets.store import Amount, nanos_to_usd
from tierwise.router.config import BudgetConfig
from tierwise.router.pricing import usd_str

log = logging.getLogger("tierwise.budgets")

AlertKind = Literal["threshold", "soft", "refused"]
Unit = Literal["usd", "tokens"]


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    budget: str  # "tenant/feature-or-*/window", or "tenant/key:NAME/window" for a key's budget
    tenant: str
    feature: str | None
    period: str
    kind: (
        AlertKind  # threshold: spend reached level x limit; soft: soft limit reached; refused: hard limit hit
    )
    unit: Unit
    level: float | None  # the share of the limit, for threshold alerts
    used: Decimal  # USD or tokens
    limit: Decimal
    resets_at: datetime
    key: str | None = None  # the API key's name, for a key's budget

    def describe(self) -> str:
        amount = f"{_text(self.used, self.unit)} of {_text(self.limit, self.unit)}"
        if self.kind == "threshold":
            what = f"reached {self.level or 0:.0%} of its limit"
        elif self.kind == "soft":
            what = "reached its soft limit"
        else:
            what = "refused a request at its hard limit"
        return f"budget {self.budget} {what} ({amount}, period {self.period}, resets {self.resets_at.isoformat()})"

    def as_json(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "tenant": self.tenant,
            "feature": self.feature,
            "key": self.key,
            "period": self.period,
            "kind": self.kind,
            "unit": self.unit,
            "level": self.level,
            "used": _text(self.used, self.unit),
            "limit": _text(self.limit, self.unit),
            "resets_at": self.resets_at.isoformat(),
            "message": self.describe(),
        }


def _text(amount: Decimal, unit: Unit) -> str:
    return f"{usd_str(amount)} USD" if unit == "usd" else f"{amount} tokens"


AlertListener = Callable[[BudgetAlert], None]


class AlertDispatcher:
    def __init__(self, *, timeout_s: float = 5.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._timeout_s = timeout_s
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._listeners: list[AlertListener] = []
        self._posts: set[asyncio.Task[None]] = set()

    def add_listener(self, listener: AlertListener) -> None:
        self._listeners.append(listener)

    def dispatch(self, alert: BudgetAlert, webhook_url: str | None) -> None:
        log.warning(alert.describe(), extra={"budget_alert": alert.as_json()})
        for listener in self._listeners:
            try:
                listener(alert)
            except Exception:
                log.exception("budget alert listener failed", extra={"budget": alert.budget})
        if webhook_url is not None:
            task = asyncio.get_running_loop().create_task(self._post(alert, webhook_url))
            self._posts.add(task)
            task.add_done_callback(self._posts.discard)

    async def drain(self) -> None:
        """Wait for the webhook posts under way (each bounded by the timeout)."""
        while self._posts:
            await asyncio.gather(*list(self._posts))

    async def aclose(self) -> None:
        await self.drain()
        if self._client is not None:
            await self._client.aclose()

    async def _post(self, alert: BudgetAlert, url: str) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s, transport=self._transport)
        try:
            response = await self._client.post(url, json=alert.as_json())
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning(
                "budget alert webhook failed: %s: %s", type(exc).__name__, exc, extra={"budget": alert.budget}
            )


ALERT_UNITS: tuple[Unit, ...] = ("usd", "tokens")


def spent_in(unit: Unit, used: Amount) -> Decimal:
    return nanos_to_usd(used.usd_nanos) if unit == "usd" else Decimal(used.tokens)


def alert_limit(budget: BudgetConfig, unit: Unit, kind: AlertKind) -> Decimal | None:
    """The limit an alert is about; thresholds are shares of the hard limit, else of the soft one."""
    hard = budget.usd if unit == "usd" else _decimal(budget.tokens)
    soft = budget.soft_usd if unit == "usd" else _decimal(budget.soft_tokens)
    if kind == "soft":
        return soft
    if kind == "refused":
        return hard
    return hard if hard is not None else soft


def _decimal(value: int | None) -> Decimal | None:
    return None if value is None else Decimal(value)
