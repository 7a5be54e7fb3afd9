"""Which served requests are judged, and the judging budget split between the two kinds of draw.

- ``uniform``: a hash of the request id against the configured rate: an unbiased sample of the traffic
  (what evaluation and the retrain gate should read);
- ``active``: on top of it, a further share of the requests that teach most: those the classifier
  found unfamiliar (reason ``unfamiliar:…``), or whose served tier's P(adequate) lay within
  ``uncertain_margin`` of 0.5 (the model could not tell).

Every judgment's feedback and spend record says which kind drew it. ``JudgeBudget`` keeps the window's
sampling spend under ``budget_usd`` and lets active draws take at most ``1 - uniform_budget_share`` of it,
so the uniform sample is never starved by the active one.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from tierwise.router.config import SamplingConfig
from tierwise.router.outcome import UNFAMILIAR_PREFIX, Decision

SampleKind = Literal["uniform", "active"]
SAMPLE_KINDS: tuple[SampleKind, ...] = ("uniform", "active")


def window_start(window: Literal["day", "month"], now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if window == "month":
        start = start.replace(day=1)
    return start.timestamp()


def draw(request_id: str, salt: str = "tierwise-sample") -> float:
    """A uniform number in [0, 1) from the request id: the same request is always in or out."""
    digest = hashlib.sha256(f"{salt}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def informative(decision: Decision, uncertain_margin: float) -> bool:
    """Unfamiliar to the classifier, or its P(adequate) for the served tier within the margin of 0.5."""
    if decision.reason.startswith(UNFAMILIAR_PREFIX):
        return True
    p = decision.p_adequate.get(decision.tier)
    return p is not None and abs(p - 0.5) <= uncertain_margin


def sample_kind(decision: Decision, uniform_rate: float, settings: SamplingConfig) -> SampleKind | None:
    """How the request is drawn for judging, if it is: ``uniform`` first (so that sample stays unbiased),
    else ``active`` when it is informative and its own draw falls under ``active_rate``."""
    if draw(decision.request_id) < uniform_rate:
        return "uniform"
    drawn = draw(decision.request_id, "tierwise-active-sample") < settings.active_rate
    return "active" if drawn and informative(decision, settings.uncertain_margin) else None


class JudgeBudget:
    """The sampling spend of the current window, per kind of draw: spent + reserved never exceeds the
    limit, and active draws never exceed ``active_share`` of it."""

    def __init__(
        self, limit_usd: Decimal, window: Literal["day", "month"], active_share: Decimal = Decimal(1)
    ) -> None:
        if not Decimal(0) <= active_share <= Decimal(1):
            raise ValueError(f"active_share must lie in [0, 1], got {active_share}")
        self.limit_usd = limit_usd
        self.active_limit_usd = limit_usd * active_share
        self._window = window
        self._period = window_start(window, time.time())
        self.spent = dict.fromkeys(SAMPLE_KINDS, Decimal(0))
        self.reserved = dict.fromkeys(SAMPLE_KINDS, Decimal(0))

    @property
    def spent_usd(self) -> Decimal:
        return sum(self.spent.values(), Decimal(0))

    @property
    def reserved_usd(self) -> Decimal:
        return sum(self.reserved.values(), Decimal(0))

    def _roll(self) -> None:
        period = window_start(self._window, time.time())
        if period != self._period:
            self._period = period
            self.spent = dict.fromkeys(SAMPLE_KINDS, Decimal(0))

    @property
    def period_start(self) -> float:
        return self._period

    def seed(self, spent: dict[SampleKind, Decimal]) -> None:
        """What this window already spent per kind (read from the ledger at start: a restart resets nothing)."""
        self.spent = {kind: spent.get(kind, Decimal(0)) for kind in SAMPLE_KINDS}

    def reserve(self, amount: Decimal, kind: SampleKind = "uniform") -> bool:
        self._roll()
        if self.spent_usd + self.reserved_usd + amount > self.limit_usd:
            return False
        if (
            kind == "active"
            and self.spent["active"] + self.reserved["active"] + amount > self.active_limit_usd
        ):
            return False
        self.reserved[kind] += amount
        return True

    def settle(self, reserved: Decimal, actual: Decimal, kind: SampleKind = "uniform") -> None:
        self.reserved[kind] -= reserved
        self.spent[kind] += actual
