"""LatencyTracker: quantiles over recent samples, cold tiers, expiry by age."""

from __future__ import annotations

import pytest

from tierwise.router.config import LatencyWindowConfig
from tierwise.router.resilience import LatencyTracker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tracker(clock: Clock, **overrides: float) -> LatencyTracker:
    config = LatencyWindowConfig(**{"samples": 100, "max_age_s": 300, "min_samples": 20, **overrides})
    return LatencyTracker("small", config, clock=clock)


def test_cold_until_min_samples_and_cold_fits_any_budget() -> None:
    t = tracker(Clock())
    for _ in range(19):
        t.record(5000.0)
    assert t.cold() and t.quantiles() is None and t.fits(1.0)
    t.record(5000.0)
    assert not t.cold() and not t.fits(1000.0) and t.fits(5000.0)


def test_quantiles_interpolate_between_order_statistics() -> None:
    t = tracker(Clock())
    for value in range(100, 0, -1):  # order of arrival does not matter
        t.record(float(value))
    q = t.quantiles()
    assert q is not None and q.samples == 100
    # Linear interpolation: rank (n-1)q = 49.5 -> 50.5; 94.05 -> 95.05; 98.01 -> 99.01.
    assert q.p50_ms == pytest.approx(50.5) and q.p95_ms == pytest.approx(95.05)
    assert q.p99_ms == pytest.approx(99.01)
    assert t.fits(95.05) and not t.fits(95.0)


def test_window_keeps_only_the_most_recent_samples() -> None:
    t = tracker(Clock())
    for _ in range(100):
        t.record(4000.0)
    for _ in range(95):
        t.record(100.0)
    q = t.quantiles()
    # 5 slow samples of 100 remain: the median has moved, the p95 sits between them.
    assert q is not None and q.p50_ms == 100.0 and q.p95_ms == pytest.approx(295.0)
    assert not t.fits(200.0)
    for _ in range(5):
        t.record(100.0)
    assert t.fits(100.0)  # the slow regime has left the window entirely


def test_old_samples_expire_so_a_slow_tier_goes_cold_again() -> None:
    clock = Clock()
    t = tracker(clock)
    for _ in range(30):
        t.record(9000.0)
    assert not t.fits(1000.0)
    clock.now += 301
    assert t.cold() and t.fits(1000.0)


def test_ttft_is_tracked_apart_from_total() -> None:
    t = tracker(Clock(), min_samples=1)
    t.record(2000.0, ttft_ms=150.0)
    t.record(1000.0)  # not streamed: first token came with the whole answer
    estimate = t.estimate()
    assert estimate.total is not None and estimate.ttft is not None
    assert estimate.total.p50_ms == pytest.approx(1500.0)
    assert estimate.ttft.p50_ms == pytest.approx(575.0)
    assert t.fits(1000.0, "ttft") and not t.fits(1000.0, "total")
