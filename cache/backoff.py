"""Exponential backoff, the one schedule behind every retry loop in tierwise.

The n-th delay (n = failures before it, from 0) is ``d = min(cap, base * 2**n)``,
jittered: ``FULL`` draws it from U(0, d), ``EQUAL`` from U(d/2, d), ``NONE`` waits d.
:class:`Backoff` counts the failures and forgets them on success; :class:`DownGate`
turns it into a clock: after a failure a dependency is skipped until its delay has passed.

It lives in ``tierwise.cache``, the lowest layer that retries (the replica follower and
the Redis entry store), because every layer may import ``cache`` and ``cache`` may
import no other: the router's retries, ledger, traffic writer and budget manager
share it from here.

Hand-written rather than tenacity or stamina, whose unit is "call f until it
succeeds": the budget manager does not retry at all but skips its store until a clock
passes (:class:`DownGate`); the provider retry loop keeps one counter per error class
and weighs each delay against Retry-After and the request deadline; the cache follower
loops forever and only sleeps between steps. Only the ledger and traffic writers are
"retry this write", and they need equal jitter and a stop on shutdown, which the
libraries express no more simply than this. What is shared is the schedule, not the loop.
The retry hints that bounded queues give a refused caller (the embedder's, the request
workers') come from :class:`RetryHint` here too.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable

__all__ = ["MIN_RETRY_AFTER_S", "Backoff", "DownGate", "Jitter", "RetryHint", "retry_after_s"]

_MAX_DOUBLINGS = 62  # 2.0**n stays finite and the cap wins long before

MIN_RETRY_AFTER_S = 0.05
"""The shortest wait a refusal hints (RetryInfo, ``retry-after-ms``): sooner, a retry meets the same queue."""


def retry_after_s(seconds: float) -> float:
    """A refusal's retry hint for ``seconds`` of work ahead of the caller."""
    return max(MIN_RETRY_AFTER_S, seconds)


class RetryHint:
    """How long the work ahead of a refused caller will take: a moving average of recent times
    (each new one weighs ``smoothing``), starting from ``initial_s`` until one was seen."""

    def __init__(self, initial_s: float, smoothing: float) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.recent_s = initial_s
        self._smoothing = smoothing

    def observe(self, seconds: float) -> None:
        self.recent_s += self._smoothing * (seconds - self.recent_s)

    def after_s(self, units: float = 1.0) -> float:
        """The hint when ``units`` such pieces of work are ahead."""
        return retry_after_s(units * self.recent_s)


class Jitter(enum.Enum):
    NONE = "none"
    FULL = "full"  # U(0, d): spreads many clients hit by one outage the most
    EQUAL = "equal"  # U(d/2, d): spread, yet never much shorter than the schedule


class Backoff:
    """Failures counted since the last success; ``next_delay`` is the wait after one more.

    ``rng`` returns a float in [0, 1) (``random.random`` or a seeded ``Random().random``).
    """

    def __init__(
        self,
        base_s: float,
        cap_s: float,
        *,
        jitter: Jitter = Jitter.NONE,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not (base_s > 0 and cap_s > 0):
            raise ValueError(f"backoff needs positive delays, got base {base_s}, cap {cap_s}")
        self.base_s, self.cap_s = base_s, cap_s
        self.jitter = jitter
        self._rng = rng
        self.failures = 0

    def ceiling(self, n: int) -> float:
        """The un-jittered n-th delay: min(cap, base·2ⁿ)."""
        return min(self.cap_s, self.base_s * 2.0 ** min(n, _MAX_DOUBLINGS))

    def delay(self, n: int) -> float:
        """The n-th delay, jittered; leaves the failure count alone (for loops that keep their own)."""
        ceiling = self.ceiling(n)
        if self.jitter is Jitter.FULL:
            return ceiling * self._rng()
        if self.jitter is Jitter.EQUAL:
            return ceiling / 2 + self._rng() * ceiling / 2
        return ceiling

    def next_delay(self) -> float:
        """Count one more failure and return the wait after it."""
        wait = self.delay(self.failures)
        self.failures += 1
        return wait

    def reset(self) -> bool:
        """A success: the next failure starts from ``base_s`` again. True if there were failures."""
        failed, self.failures = self.failures > 0, 0
        return failed


class DownGate:
    """Skip a dependency after it failed, until its backoff delay has passed on ``clock``."""

    def __init__(self, backoff: Backoff, clock: Callable[[], float] = time.monotonic) -> None:
        self._backoff = backoff
        self._clock = clock
        self.down_until: float | None = None

    def ready(self) -> bool:
        """Worth a try: never failed, recovered, or the wait is over."""
        return self.down_until is None or self._clock() >= self.down_until

    def failed(self) -> float:
        """Close the gate for the next delay; returns that delay."""
        wait = self._backoff.next_delay()
        self.down_until = self._clock() + wait
        return wait

    def succeeded(self) -> bool:
        """Open the gate and reset the backoff; True if it had been down."""
        was_down = self.down_until is not None
        self.down_until = None
        self._backoff.reset()
        return was_down
