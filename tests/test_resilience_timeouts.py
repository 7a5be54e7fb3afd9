"""Per-try timeouts: a tier's own by its latency history, and each try's inside the caller's deadline."""

from __future__ import annotations

from typing import Any

import pytest

from tierwise.router.config import Config, TierConfig, parse_config
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


def health_with_answers(total_s: float, output_tokens: int | None, ttft_s: float | None = None) -> TierHealth:
    health = TierHealth(config(timeout_s=120), clock=Clock())
    for _ in range(MIN_SAMPLES):
        health.observe("small", total_s, None, ttft_s=ttft_s, output_tokens=output_tokens)
    return health


@pytest.mark.parametrize(
    ("bound", "expected"),
    [
        (10, 2.4),  # a bound under the usual outputs: never scaled down, 3 x p99
        (50, 2.4),  # as long as the usual outputs: 3 x p99
        (100, 4.8),
        (1000, 48.0),  # 20 x the usual outputs: 20 x as long
        (5000, 120.0),  # the ceiling, timeout_s
    ],
)
def test_a_unary_try_scales_the_short_answers_history_to_its_output_bound(
    bound: int, expected: float
) -> None:
    health = health_with_answers(0.8, 50)  # 50 tokens in 0.8 s
    assert health.timeout_s("small", "total", bound) == pytest.approx(expected)
    assert health.try_timeout_s("small", [], None, bound=lambda tier: bound) == pytest.approx(expected)


def test_a_hanging_tier_asked_for_a_short_answer_is_left_after_a_few_usual_call_times() -> None:
    health = health_with_answers(1.5, 50)
    for bound in (1, 20, 50):
        assert health.try_timeout_s("small", [], 60.0, bound=lambda tier, b=bound: b) == pytest.approx(4.5)


def test_a_stream_splits_its_first_token_from_its_generation_and_keeps_the_ttft_rule() -> None:
    health = health_with_answers(1.0, 50, ttft_s=0.5)
    # 0.5 s to the first token, then 0.5 s for 50 tokens: 500 tokens take 0.5 + 10 x 0.5 = 5.5 s.
    assert health.timeout_s("small", "total", 500) == pytest.approx(16.5)
    # A streamed try waits for each piece: time to first token, whatever the bound.
    assert health.try_timeout_s("small", [], None, streamed=True, bound=lambda t: 500) == pytest.approx(2.0)


def test_a_call_whose_output_was_not_counted_is_taken_as_it_is() -> None:
    assert health_with_answers(1.5, None).timeout_s("small", "total", 1000) == pytest.approx(4.5)
    assert health_with_answers(1.5, 0).timeout_s("small", "total", 1000) == pytest.approx(4.5)


def test_the_later_tiers_keep_their_timeout_for_their_own_output_bound() -> None:
    health = TierHealth(config(), clock=Clock())
    for _ in range(MIN_SAMPLES):
        health.observe("large", 0.2, None, output_tokens=10)
    bounds = {"small": 50, "large": 200}  # large: 3 x 0.2 s x 20 = 12 s

    def bound(tier: TierConfig) -> int:
        return bounds[tier.name]

    assert health.try_timeout_s("large", [], None, bound=bound) == pytest.approx(12.0)
    assert health.try_timeout_s("small", ["large"], 30.0, bound=bound) == pytest.approx(18.0)


@pytest.mark.asyncio
async def test_a_guarded_call_records_its_answers_output_tokens() -> None:
    clock = Clock()
    health = TierHealth(config(timeout_s=120), clock=clock)

    async def answer() -> str:
        clock.now += 0.8
        return "fifty tokens"

    for _ in range(MIN_SAMPLES):
        outcome = await health.call("small", answer, deadline=None, clock=clock, output_tokens=lambda a: 50)
        assert outcome.ok
    assert health.timeout_s("small", "total", 1000) == pytest.approx(48.0)
