"""The ``RateLimiter`` protocol and its in-process implementation: GCRA over a one-minute period.

GCRA (the generic cell rate algorithm) keeps one number per bucket, the theoretical arrival time
(TAT): when the bucket would be empty again at its sustained rate. A request of cost ``n`` moves
the TAT by ``n`` emission intervals (60 s / limit) and is admitted while the TAT stays within one
period of now. So a full minute's limit may pass at once (the burst is the limit), and after that
the limit refills evenly over the minute: in any 60 s window at most twice the limit can pass (a
burst after an idle minute, then the refill), and over longer spans the rate tends to the limit.
One number per bucket, no per-request log, makes it cheap in memory and in Redis alike.

A TPM charge is an estimate; ``adjust`` corrects it after the call. Charging more moves the TAT
on from now; giving back takes off at most the part of the request's own charge still in the
bucket (its slice of the TAT not yet drained), so a correction that arrives after a long call
never credits capacity that other requests hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

PERIOD_S = 60.0

Scope = Literal["key", "tenant"]
Kind = Literal["rpm", "tpm"]


@dataclass(frozen=True, slots=True)
class Charge:
    """What one request takes from one bucket: ``cost`` requests or tokens against ``limit`` per minute."""

    scope: Scope
    name: str  # the tenant, or the key's configured name (else its digest prefix); never the secret
    tenant: str
    kind: Kind
    limit: int
    cost: int

    @property
    def bucket(self) -> str:
        return f"{self.scope}:{self.name}:{self.kind}"

    @property
    def interval_s(self) -> float:
        return PERIOD_S / self.limit


@dataclass(frozen=True, slots=True)
class Refusal:
    charge: Charge
    retry_after_s: float


@dataclass(frozen=True, slots=True)
class Admitted:
    tats: tuple[float, ...]  # each bucket's TAT just after this request's charge, in the limiter's time


class RateLimitStoreUnavailable(Exception):
    """The shared store could not be asked; the gate's fail mode decides."""


class RateLimiter(Protocol):
    async def acquire(self, charges: Sequence[Charge]) -> Refusal | Admitted:
        """Take every charge, or none of them and say which one is over its limit and for how long."""
        ...

    async def adjust(self, charge: Charge, tokens: int, tat: float) -> None:
        """Add ``tokens`` (negative: give back) to a charge taken when it left the bucket at ``tat``."""
        ...

    async def aclose(self) -> None: ...


def gcra_step(tat: float, now: float, charge: Charge) -> tuple[float, float]:
    """The bucket's TAT after ``charge`` and the wait before it fits (0: it fits now)."""
    new_tat = max(tat, now) + charge.cost * charge.interval_s
    return new_tat, max(0.0, new_tat - now - PERIOD_S)


def gcra_adjust(current: float, now: float, charge: Charge, tokens: int, tat: float) -> float:
    """The bucket's TAT after adding ``tokens`` to ``charge``, taken with TAT ``tat`` (see above)."""
    if tokens >= 0:
        return max(current, now) + tokens * charge.interval_s
    undrained = max(0.0, tat - max(now, tat - charge.cost * charge.interval_s))
    return current - min(-tokens * charge.interval_s, undrained)


class MemoryRateLimiter:
    """One process's buckets (the embedded store). Buckets are per configured tenant and key, so
    their number is bounded by the config."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tats: dict[str, float] = {}

    async def acquire(self, charges: Sequence[Charge]) -> Refusal | Admitted:
        # No await between reading and writing: the event loop makes this atomic.
        now = self._clock()
        steps = [gcra_step(self._tats.get(c.bucket, now), now, c) for c in charges]
        waits = [(wait, c) for (_, wait), c in zip(steps, charges, strict=True) if wait > 0]
        if waits:
            wait, charge = max(waits, key=lambda item: item[0])
            return Refusal(charge, wait)
        for (tat, _), charge in zip(steps, charges, strict=True):
            self._tats[charge.bucket] = tat
        return Admitted(tuple(tat for tat, _ in steps))

    async def adjust(self, charge: Charge, tokens: int, tat: float) -> None:
        now = self._clock()
        self._tats[charge.bucket] = gcra_adjust(self._tats.get(charge.bucket, now), now, charge, tokens, tat)

    async def aclose(self) -> None:
        self._tats.clear()
