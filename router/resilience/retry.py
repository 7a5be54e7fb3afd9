"""Retries on one tier: per error class, full-jitter exponential backoff, all inside the deadline.

Full jitter (sleep ~ U(0, min(cap, base * 2**n)), n = earlier failures of the
same class) spreads the retries of many clients hit by one outage instead of
sending them back in lockstep. A rate-limited answer's Retry-After is the
least we wait; one longer than ``max_retry_after_s`` is not waited for, and
neither is any backoff that would end at or past the deadline: the caller
moves on to its next tier instead.

The schedule is the shared one (``tierwise.cache.backoff``); the per-class counts,
Retry-After and the deadline are this loop's own.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from tierwise.cache.backoff import Backoff, Jitter
from tierwise.router.config import Backoff as ClassBackoff
from tierwise.router.config import RetryConfig
from tierwise.router.providers.errors import ErrorType, ProviderError

T = TypeVar("T")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class StopReason(enum.Enum):
    SUCCEEDED = "succeeded"
    NOT_RETRYABLE = "not_retryable"  # client and protocol errors: another try cannot help
    ATTEMPTS = "attempts"  # the class's or the overall max_attempts was reached
    DEADLINE = "deadline"  # the backoff would end at or past the deadline
    RETRY_AFTER = "retry_after"  # the upstream asked for a longer wait than max_retry_after_s
    REFUSED = "refused"  # the permit hook (a circuit breaker) refused the call


@dataclass(frozen=True, slots=True)
class TryRecord:
    """One call: how long it took, how it failed (None: it succeeded), the backoff slept after it."""

    duration_s: float
    error: ProviderError | None = None
    backoff_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RetryOutcome(Generic[T]):
    tries: tuple[TryRecord, ...]
    stop: StopReason
    value: T | None = None

    @property
    def ok(self) -> bool:
        return self.stop is StopReason.SUCCEEDED

    @property
    def error(self) -> ProviderError | None:
        """The last call's error; None after a success or when no call was made."""
        return self.tries[-1].error if self.tries else None


class RetryPolicy:
    def __init__(self, config: RetryConfig, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng or random.Random()
        self._classes: dict[ErrorType, ClassBackoff] = {
            ErrorType.RATE_LIMITED: config.rate_limited,
            ErrorType.SERVER_ERROR: config.server_error,
            ErrorType.TIMEOUT: config.timeout,
            ErrorType.CONNECTION: config.connection,
        }
        # Only the schedule is shared: the per-class counts live in ``run`` (one request's tries).
        self._schedules = {
            kind: Backoff(c.base_s, c.cap_s, jitter=Jitter.FULL, rng=self._rng.random)
            for kind, c in self._classes.items()
        }

    def backoff_s(self, error: ProviderError, failures_of_class: int) -> float:
        """The wait after the ``failures_of_class``-th failure (1-based) of ``error``'s class."""
        delay = self._schedules[error.error_type].delay(failures_of_class - 1)
        if error.error_type is ErrorType.RATE_LIMITED and error.retry_after_s is not None:
            delay = max(delay, error.retry_after_s)
        return delay

    async def run(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        deadline: float | None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        permit: Callable[[], bool] | None = None,
        observe: Callable[[float, ProviderError | None], None] | None = None,
    ) -> RetryOutcome[T]:
        """Call until success or a stop reason; ``deadline`` is on ``clock``'s scale.

        ``permit`` is asked before every call (a circuit breaker's ``allow``);
        ``observe`` hears each call's duration and error. Only ``ProviderError``
        is handled here: anything else (cancellation, a passed deadline) propagates.
        """
        tries: list[TryRecord] = []
        failures: Counter[ErrorType] = Counter()
        while True:
            if permit is not None and not permit():
                return RetryOutcome(tuple(tries), StopReason.REFUSED)
            started = clock()
            try:
                value = await call()
            except ProviderError as error:
                duration = clock() - started
                if observe is not None:
                    observe(duration, error)
                failures[error.error_type] += 1
                stop, delay = self._next_step(error, failures, len(tries) + 1, deadline, clock)
                tries.append(TryRecord(duration, error, delay))
                if stop is not None:
                    return RetryOutcome(tuple(tries), stop)
                await sleep(delay)
                continue
            duration = clock() - started
            if observe is not None:
                observe(duration, None)
            tries.append(TryRecord(duration))
            return RetryOutcome(tuple(tries), StopReason.SUCCEEDED, value)

    def _next_step(
        self,
        error: ProviderError,
        failures: Counter[ErrorType],
        calls: int,
        deadline: float | None,
        clock: Clock,
    ) -> tuple[StopReason | None, float]:
        backoff = self._classes.get(error.error_type)
        if backoff is None:
            return StopReason.NOT_RETRYABLE, 0.0
        if calls >= self._config.max_attempts or failures[error.error_type] >= backoff.max_attempts:
            return StopReason.ATTEMPTS, 0.0
        if (
            error.error_type is ErrorType.RATE_LIMITED
            and error.retry_after_s is not None
            and error.retry_after_s > self._config.max_retry_after_s
        ):
            return StopReason.RETRY_AFTER, 0.0
        delay = self.backoff_s(error, failures[error.error_type])
        if deadline is not None and clock() + delay >= deadline:
            return StopReason.DEADLINE, 0.0
        return None, delay
