"""A per-tier circuit breaker on failure rate and slow-call rate (resilience4j's model).

Closed: every call is let through and its outcome goes into a sliding window
(the last ``window_calls`` calls, or the calls of the last ``window_s``
seconds). Once the window holds ``min_calls`` calls and the failure rate or
the slow-call rate reaches its threshold, the circuit opens: calls are
refused for ``open_s``. Then it is half-open: ``half_open_calls`` probes are
let through; if every one succeeds within the slow-call threshold the circuit
closes with an empty window, and the first failed or slow probe opens it again.

Outcomes reported while open (calls let through before it opened) are ignored.
The breaker is guarded by a lock because the metrics exporter reads snapshots
from its own thread; listeners run outside the lock.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from tierwise.router.config import BreakerConfig


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class StateChange:
    tier: str
    old: BreakerState
    new: BreakerState
    reason: str
    at: float  # on the breaker's clock


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    tier: str
    state: BreakerState
    calls: int  # in the window
    failures: int
    slow_calls: int
    failure_rate: float
    slow_call_rate: float
    retry_at: float | None  # when an open circuit turns half-open, on the breaker's clock
    probes_in_flight: int
    probes_succeeded: int


@dataclass(frozen=True, slots=True)
class _Outcome:
    at: float
    failed: bool
    slow: bool


Listener = Callable[[StateChange], None]


class CircuitBreaker:
    def __init__(
        self,
        tier: str,
        config: BreakerConfig,
        slow_call_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tier = tier
        self._config = config
        self._slow_call_s = slow_call_s
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._state = BreakerState.CLOSED
        self._window: deque[_Outcome] = deque()
        self._failures = 0
        self._slow = 0
        self._retry_at: float | None = None
        self._probes_started = 0
        self._probes_succeeded = 0

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def state(self) -> BreakerState:
        with self._lock:
            change = self._refresh()
            state = self._state
        self._notify(change)
        return state

    def allow(self) -> bool:
        """May a call go ahead? In half-open this takes one of the probe permits."""
        if not self._config.enabled:
            return True
        with self._lock:
            change = self._refresh()
            if self._state is BreakerState.CLOSED:
                allowed = True
            elif (
                self._state is BreakerState.HALF_OPEN and self._probes_started < self._config.half_open_calls
            ):
                self._probes_started += 1
                allowed = True
            else:
                allowed = False
        self._notify(change)
        return allowed

    def record_success(self, duration_s: float) -> None:
        self._record(failed=False, duration_s=duration_s)

    def record_failure(self, duration_s: float) -> None:
        self._record(failed=True, duration_s=duration_s)

    def release(self) -> None:
        """A permitted call ended with no verdict on the tier's health (a client error, a cancel)."""
        with self._lock:
            if self._state is BreakerState.HALF_OPEN and self._probes_started > self._probes_succeeded:
                self._probes_started -= 1

    def snapshot(self) -> BreakerSnapshot:
        with self._lock:
            change = self._refresh()
            calls = len(self._window)
            snapshot = BreakerSnapshot(
                tier=self.tier,
                state=self._state,
                calls=calls,
                failures=self._failures,
                slow_calls=self._slow,
                failure_rate=self._failures / calls if calls else 0.0,
                slow_call_rate=self._slow / calls if calls else 0.0,
                retry_at=self._retry_at if self._state is BreakerState.OPEN else None,
                probes_in_flight=self._probes_started - self._probes_succeeded,
                probes_succeeded=self._probes_succeeded,
            )
        self._notify(change)
        return snapshot

    # -- under the lock ----------------------------------------------------

    def _record(self, *, failed: bool, duration_s: float) -> None:
        if not self._config.enabled:
            return
        slow = duration_s > self._slow_call_s
        with self._lock:
            change = self._refresh()
            if self._state is BreakerState.CLOSED:
                change = self._add(_Outcome(self._clock(), failed, slow)) or change
            elif self._state is BreakerState.HALF_OPEN:
                change = self._probe_done(failed, slow) or change
        self._notify(change)

    def _add(self, outcome: _Outcome) -> StateChange | None:
        self._window.append(outcome)
        self._failures += outcome.failed
        self._slow += outcome.slow
        self._trim(outcome.at)
        calls = len(self._window)
        if calls < self._config.min_calls:
            return None
        if self._failures / calls >= self._config.failure_rate:
            return self._open(
                f"failure rate {self._failures}/{calls} reached {self._config.failure_rate:.0%}"
            )
        if self._slow / calls >= self._config.slow_call_rate:
            return self._open(
                f"slow-call rate {self._slow}/{calls} over {self._slow_call_s * 1000:.0f} ms "
                f"reached {self._config.slow_call_rate:.0%}"
            )
        return None

    def _trim(self, now: float) -> None:
        config = self._config
        while self._window and (
            (config.window == "count" and len(self._window) > config.window_calls)
            or (config.window == "time" and self._window[0].at <= now - config.window_s)
        ):
            dropped = self._window.popleft()
            self._failures -= dropped.failed
            self._slow -= dropped.slow

    def _probe_done(self, failed: bool, slow: bool) -> StateChange | None:
        if failed or slow:
            return self._open("a half-open probe " + ("failed" if failed else "was slow"))
        self._probes_succeeded += 1
        if self._probes_succeeded >= self._config.half_open_calls:
            return self._move(BreakerState.CLOSED, f"{self._probes_succeeded} probes succeeded")
        return None

    def _open(self, reason: str) -> StateChange:
        change = self._move(BreakerState.OPEN, reason)
        self._retry_at = change.at + self._config.open_s
        return change

    def _refresh(self) -> StateChange | None:
        if (
            self._state is BreakerState.OPEN
            and self._retry_at is not None
            and self._clock() >= self._retry_at
        ):
            return self._move(BreakerState.HALF_OPEN, f"open for {self._config.open_s:g} s")
        return None

    def _move(self, new: BreakerState, reason: str) -> StateChange:
        change = StateChange(self.tier, self._state, new, reason, self._clock())
        self._state = new
        self._window.clear()
        self._failures = self._slow = 0
        self._probes_started = self._probes_succeeded = 0
        self._retry_at = None
        return change

    def _notify(self, change: StateChange | None) -> None:
        if change is not None:
            for listener in self._listeners:
                listener(change)
