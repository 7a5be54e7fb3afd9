"""The per-address failure throttle on its own: windows that end, bounded memory, addresses
without ports. (Through the server: ``test_auth_edges``.)"""

from __future__ import annotations

import pytest

from tierwise.router.auth_throttle import FailureThrottle, source_address
from tierwise.router.config import AuthThrottleConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_window_ends_and_the_source_starts_afresh() -> None:
    clock = FakeClock()
    throttle = FailureThrottle(AuthThrottleConfig(max_failures=2, window_s=60), clock)
    assert throttle.retry_after("a") is None
    assert throttle.failed("a") is False
    clock.now += 59
    assert throttle.failed("a") is True  # the second failure, still in the window opened at 1000
    assert throttle.retry_after("a") == pytest.approx(1)
    assert throttle.retry_after("b") is None  # other sources are not affected
    clock.now += 1
    assert throttle.retry_after("a") is None and len(throttle) == 0
    assert throttle.failed("a") is False  # a fresh window: one failure of two


def test_per_source_memory_is_bounded_and_forgets_the_least_recent_first() -> None:
    clock = FakeClock()
    throttle = FailureThrottle(AuthThrottleConfig(max_failures=1, window_s=60, max_sources=100), clock)
    for i in range(10_000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100
    assert throttle.retry_after("10.0.0.0") is None  # forgotten
    assert throttle.retry_after("10.0.39.15") is not None  # the last one, still blocked


@pytest.mark.parametrize(
    ("peer", "source"),
    [
        ("ipv4:127.0.0.1:50123", "127.0.0.1"),
        ("ipv6:[::1]:50123", "::1"),
        ("ipv6:%5B2001:db8::7%5D:443", "2001:db8::7"),
        ("unix:/run/tierwise.sock", "unix:/run/tierwise.sock"),
    ],
)
def test_the_source_is_the_peer_address_without_its_port(peer: str, source: str) -> None:
    assert source_address(peer) == source
