"""The one back-off schedule: doubling to a cap, its jitter modes, reset, the clock gate, and the
retry hints of the bounded queues."""

from __future__ import annotations

import pytest

from tierwise.cache.backoff import MIN_RETRY_AFTER_S, Backoff, DownGate, Jitter, RetryHint, retry_after_s


def test_the_schedule_doubles_to_the_cap_and_restarts_after_a_success() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.reset() is True
    assert backoff.reset() is False  # nothing failed since
    assert backoff.next_delay() == 0.5
    assert backoff.ceiling(10_000) == 3.0  # no overflow however long the outage


@pytest.mark.parametrize(
    ("jitter", "draw", "expected"),
    [(Jitter.FULL, 0.0, 0.0), (Jitter.FULL, 0.5, 2.0), (Jitter.EQUAL, 0.0, 2.0), (Jitter.EQUAL, 0.5, 3.0)],
)
def test_jitter_draws_within_its_band(jitter: Jitter, draw: float, expected: float) -> None:
    backoff = Backoff(1.0, 10.0, jitter=jitter, rng=lambda: draw)
    assert backoff.delay(2) == expected  # ceiling 4.0
    assert backoff.failures == 0  # delay(n) leaves the count to loops that keep their own


def test_bad_delays_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Backoff(0, 1.0)


def test_the_gate_stays_shut_for_the_delay_then_opens() -> None:
    now = [100.0]
    gate = DownGate(Backoff(2.0, 8.0), clock=lambda: now[0])
    assert gate.ready()
    assert gate.failed() == 2.0
    assert not gate.ready()
    now[0] = 102.0
    assert gate.ready()
    assert gate.failed() == 4.0  # a second failure waits longer
    assert gate.down_until == 106.0
    assert gate.succeeded() is True
    assert gate.ready() and gate.succeeded() is False
    assert gate.failed() == 2.0  # the success reset the schedule


def test_a_retry_hint_follows_recent_times_and_never_goes_under_the_floor() -> None:
    hint = RetryHint(initial_s=0.2, smoothing=0.5)
    assert hint.after_s() == 0.2 and hint.after_s(3) == pytest.approx(0.6)
    hint.observe(0.4)
    assert hint.after_s() == pytest.approx(0.3)  # halfway to the new time
    for _ in range(40):
        hint.observe(0.001)
    assert hint.after_s() == MIN_RETRY_AFTER_S and hint.after_s(1000) == pytest.approx(hint.recent_s * 1000)
    assert retry_after_s(0.0) == MIN_RETRY_AFTER_S and retry_after_s(2.5) == 2.5
    with pytest.raises(ValueError, match="smoothing"):
        RetryHint(0.1, smoothing=0.0)
