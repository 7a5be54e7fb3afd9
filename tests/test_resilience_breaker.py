"""CircuitBreaker transitions on failure and slow-call rates, with an injected clock."""

from __future__ import annotations

from typing import Any

import pytest

from tierwise.router.config import BreakerConfig
from tierwise.router.resilience import BreakerState, CircuitBreaker, StateChange


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **overrides: Any) -> tuple[CircuitBreaker, list[StateChange]]:
    config = BreakerConfig(
        **{"window_calls": 20, "min_calls": 10, "open_s": 30, "half_open_calls": 3, **overrides}
    )
    changes: list[StateChange] = []
    result = CircuitBreaker("small", config, slow_call_s=1.0, clock=clock)
    result.add_listener(changes.append)
    return result, changes


def fail(b: CircuitBreaker, times: int, duration_s: float = 0.1) -> None:
    for _ in range(times):
        assert b.allow()
        b.record_failure(duration_s)


def succeed(b: CircuitBreaker, times: int, duration_s: float = 0.1) -> None:
    for _ in range(times):
        assert b.allow()
        b.record_success(duration_s)


def trip(b: CircuitBreaker) -> None:
    fail(b, 10)
    assert b.state is BreakerState.OPEN


def test_min_calls_respected_then_opens_on_failure_rate() -> None:
    clock = Clock()
    b, changes = breaker(clock)
    fail(b, 9)  # 100 % failures, but fewer calls than min_calls
    assert b.state is BreakerState.CLOSED
    fail(b, 1)
    assert b.state is BreakerState.OPEN and not b.allow()
    assert [(c.old, c.new) for c in changes] == [(BreakerState.CLOSED, BreakerState.OPEN)]
    assert "failure rate 10/10" in changes[0].reason
    assert b.snapshot().retry_at == pytest.approx(130.0)


def test_failure_rate_below_threshold_stays_closed() -> None:
    b, _ = breaker(Clock())
    for _ in range(10):
        succeed(b, 3)
        fail(b, 2)  # 40 % < 50 %
    assert b.state is BreakerState.CLOSED
    snapshot = b.snapshot()
    assert (snapshot.calls, snapshot.failures, snapshot.failure_rate) == (20, 8, 0.4)


def test_count_window_forgets_old_calls() -> None:
    b, _ = breaker(Clock())
    succeed(b, 100)
    fail(b, 9)
    assert b.state is BreakerState.CLOSED  # 9 of the last 20
    fail(b, 1)
    assert b.state is BreakerState.OPEN  # 10 of the last 20, though 10 of 110 overall


def test_time_window_forgets_old_calls() -> None:
    clock = Clock()
    b, _ = breaker(clock, window="time", window_s=60, min_calls=6)
    fail(b, 5)
    clock.now += 61
    fail(b, 5)
    assert b.state is BreakerState.CLOSED  # only 5 calls in the last 60 s
    fail(b, 1)
    assert b.state is BreakerState.OPEN


def test_opens_on_slow_calls() -> None:
    b, changes = breaker(Clock())
    succeed(b, 5, duration_s=0.5)
    succeed(b, 4, duration_s=1.5)
    assert b.state is BreakerState.CLOSED
    succeed(b, 1, duration_s=1.5)  # 5 of 10 over the 1 s threshold
    assert b.state is BreakerState.OPEN
    assert "slow-call rate 5/10" in changes[-1].reason


def test_open_turns_half_open_after_the_interval_and_limits_probes() -> None:
    clock = Clock()
    b, changes = breaker(clock)
    trip(b)
    clock.now += 29.9
    assert not b.allow() and b.state is BreakerState.OPEN
    clock.now += 0.1
    assert b.state is BreakerState.HALF_OPEN
    assert [b.allow() for _ in range(4)] == [True, True, True, False]
    b.release()  # one probe ended without a verdict: its permit is free again
    assert b.allow() and not b.allow()
    assert changes[-1].new is BreakerState.HALF_OPEN and changes[-1].at == pytest.approx(130.0)


def test_half_open_closes_after_successful_probes() -> None:
    clock = Clock()
    b, changes = breaker(clock)
    trip(b)
    clock.now += 30
    for _ in range(2):
        assert b.allow()
        b.record_success(0.2)
        assert b.state is BreakerState.HALF_OPEN
    assert b.allow()
    b.record_success(0.2)
    assert b.state is BreakerState.CLOSED
    assert b.snapshot().calls == 0  # a fresh window
    assert [c.new for c in changes] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    fail(b, 9)
    assert b.state is BreakerState.CLOSED  # min_calls applies again from scratch


@pytest.mark.parametrize(
    ("failed", "duration_s", "reason"), [(True, 0.1, "failed"), (False, 5.0, "was slow")]
)
def test_failed_or_slow_probe_opens_again(failed: bool, duration_s: float, reason: str) -> None:
    clock = Clock()
    b, changes = breaker(clock)
    trip(b)
    clock.now += 30
    assert b.allow()
    b.record_success(0.1)
    assert b.allow()
    (b.record_failure if failed else b.record_success)(duration_s)
    assert b.state is BreakerState.OPEN and not b.allow()
    assert changes[-1].reason == f"a half-open probe {reason}"
    assert b.snapshot().retry_at == pytest.approx(clock.now + 30)


def test_outcomes_reported_while_open_are_ignored() -> None:
    clock = Clock()
    b, _ = breaker(clock)
    trip(b)
    b.record_success(0.1)
    b.record_failure(0.1)
    snapshot = b.snapshot()
    assert snapshot.state is BreakerState.OPEN and snapshot.calls == 0


def test_disabled_breaker_never_refuses() -> None:
    b, changes = breaker(Clock(), enabled=False)
    fail(b, 50)
    assert b.allow() and b.state is BreakerState.CLOSED and changes == []


def test_config_refuses_a_breaker_that_can_never_trip() -> None:
    with pytest.raises(ValueError, match="min_calls must not exceed window_calls"):
        BreakerConfig(window_calls=5, min_calls=10)
