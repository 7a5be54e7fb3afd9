"""Per-try timeouts: a tier's own by its latency history, and each try's inside the caller's deadline."""

from __future__ import annotations

from typing import Any

import pytest

from tierwise.router.config import Config, parse_config
from tierwise.router.resilience import TierHealth

MIN_SAMPLES = 4


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def config(**small: Any) -> Config:
    tiers = [
        {"name": "small", "provider": "openai", "base_url": "http://127.0.0.1:1", "model": "s", **small},
        {"name": "large", "provider": "openai", "base_url": "http://127.0.0.1:1", "model": "l"},
    ]
    return parse_config({"tiers": tiers, "resilience": {"latency_window": {"min_samples": MIN_SAMPLES}}})


def health_with_history(total_s: float, ttft_s: float | None = None, **small: Any) -> TierHealth:
    health = TierHealth(config(**small), clock=Clock())
    for _ in range(MIN_SAMPLES):
        health.observe("small", total_s, None, ttft_s=ttft_s)
    return health


def test_a_tier_without_history_waits_its_timeout_s() -> None:
    health = health_with_history(0.1)
    assert health.timeout_s("large") == 30.0  # no history: the configured default
    assert TierHealth(config(timeout_s=12), clock=Clock()).timeout_s("small") == 12.0


@pytest.mark.parametrize(
    ("total_s", "small", "expected"),
    [
        (0.1, {}, 2.0),  # 3 x p99 = 0.3 s: the floor
        (1.5, {}, 4.5),  # 3 x p99
        (20.0, {}, 30.0),  # 3 x p99 = 60 s: the ceiling, timeout_s
        (1.5, {"timeout_p99_factor": 2}, 3.0),
        (0.1, {"min_timeout_s": 0.5}, 0.5),
        (0.1, {"timeout_s": 1.0}, 1.0),  # a floor over timeout_s yields to it
        (1.5, {"adaptive_timeout": False}, 30.0),  # the explicit override: always timeout_s
    ],
)
def test_with_history_a_tier_waits_a_multiple_of_its_p99_within_floor_and_timeout_s(
    total_s: float, small: dict[str, Any], expected: float
) -> None:
    assert health_with_history(total_s, **small).timeout_s("small") == pytest.approx(expected)


def test_a_stream_follows_time_to_first_token() -> None:
    health = health_with_history(20.0, ttft_s=1.0)
    assert health.timeout_s("small", "ttft") == pytest.approx(3.0)
    assert health.try_timeout_s("small", [], None, streamed=True) == pytest.approx(3.0)
    assert health.try_timeout_s("small", [], None) == pytest.approx(30.0)


def test_each_try_leaves_the_later_tiers_their_time_but_at_most_half_of_what_is_left() -> None:
    cold = TierHealth(config(), clock=Clock())
    assert cold.try_timeout_s("small", ["large"], None) == 30.0  # no deadline
    assert cold.try_timeout_s("small", ["large"], 10.0) == 5.0  # the cold large tier keeps half
    assert cold.try_timeout_s("small", ["large"], 60.0) == 30.0
    assert cold.try_timeout_s("large", [], 10.0) == 10.0  # the last tier gets all that is left
    assert cold.try_timeout_s("large", [], 45.0) == 30.0  # ... up to its own timeout
    # A large tier known to answer within 2 s (its floor) keeps only that.
    warm = TierHealth(config(), clock=Clock())
    for _ in range(MIN_SAMPLES):
        warm.observe("large", 0.2, None)
    assert warm.try_timeout_s("small", ["large"], 10.0) == 8.0
    assert warm.try_timeout_s("small", ["large", "large"], 10.0) == 6.0  # every later tier keeps its own
