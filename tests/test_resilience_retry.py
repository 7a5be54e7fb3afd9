"""RetryPolicy and TierHealth.call: backoff bounds, Retry-After, deadlines, what is never retried."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import pytest

from tierwise.router.config import Backoff, RetryConfig, parse_config
from tierwise.router.providers.errors import ErrorType, ProviderError
from tierwise.router.resilience import BreakerState, RetryPolicy, StopReason, TierHealth


class FakeTime:
    """A clock that only moves when something sleeps on it (or a call takes time)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def failing(
    time: FakeTime, *errors: ProviderError, value: str = "ok", took_s: float = 0.1
) -> Callable[[], Awaitable[str]]:
    """A call that raises ``errors`` in turn, then returns ``value``; each try takes ``took_s``."""
    queue = list(errors)

    async def call() -> str:
        time.now += took_s
        if queue:
            raise queue.pop(0)
        return value

    return call


def error(kind: ErrorType, retry_after_s: float | None = None) -> ProviderError:
    return ProviderError(kind, f"{kind.value} from upstream", retry_after_s=retry_after_s)


@pytest.mark.asyncio
async def test_backoff_is_full_jitter_within_exponential_bounds_and_seeded() -> None:
    config = RetryConfig(max_attempts=8, server_error=Backoff(max_attempts=8, base_s=0.1, cap_s=0.5))
    time = FakeTime()
    outcome = await RetryPolicy(config, random.Random(7)).run(
        failing(time, *[error(ErrorType.SERVER_ERROR)] * 20), deadline=None, clock=time, sleep=time.sleep
    )
    assert outcome.stop is StopReason.ATTEMPTS and len(outcome.tries) == 8
    ceilings = [min(0.5, 0.1 * 2**n) for n in range(7)]  # 0.1 0.2 0.4 0.5 0.5 0.5 0.5
    expected_rng = random.Random(7)
    assert time.slept == [expected_rng.uniform(0, c) for c in ceilings]
    assert all(0 <= s <= c for s, c in zip(time.slept, ceilings, strict=True))
    assert [t.backoff_s for t in outcome.tries] == [*time.slept, 0.0]
    assert len(set(time.slept)) == len(time.slept)  # jittered, not a fixed schedule
    assert outcome.error is not None and outcome.error.error_type is ErrorType.SERVER_ERROR


@pytest.mark.asyncio
async def test_retry_after_is_the_least_wait_and_success_ends_the_loop() -> None:
    time = FakeTime()
    policy = RetryPolicy(RetryConfig(), random.Random(1))
    outcome = await policy.run(
        failing(time, error(ErrorType.RATE_LIMITED, retry_after_s=3.0)),
        deadline=10.0,
        clock=time,
        sleep=time.sleep,
    )
    assert outcome.ok and outcome.value == "ok"
    assert time.slept == [3.0]  # U(0, 0.5) jitter is below the 3 s the upstream asked for
    assert [t.error is None for t in outcome.tries] == [False, True]
    assert outcome.tries[0].duration_s == pytest.approx(0.1)


@pytest.mark.asyncio
async def test_retry_after_beyond_the_limit_is_not_waited_for() -> None:
    time = FakeTime()
    policy = RetryPolicy(RetryConfig(max_retry_after_s=5.0))
    outcome = await policy.run(
        failing(time, error(ErrorType.RATE_LIMITED, retry_after_s=60.0)),
        deadline=None,
        clock=time,
        sleep=time.sleep,
    )
    assert outcome.stop is StopReason.RETRY_AFTER and len(outcome.tries) == 1 and time.slept == []


@pytest.mark.asyncio
async def test_never_sleeps_past_the_deadline() -> None:
    config = RetryConfig(max_attempts=50, connection=Backoff(max_attempts=50, base_s=0.2, cap_s=10.0))
    for seed in range(20):
        time = FakeTime()
        outcome = await RetryPolicy(config, random.Random(seed)).run(
            failing(time, *[error(ErrorType.CONNECTION)] * 50), deadline=2.0, clock=time, sleep=time.sleep
        )
        assert outcome.stop is StopReason.DEADLINE
        assert time.now < 2.0 + 0.1  # the last try may run up to its own timeout, never a sleep
        sleep_ends, now = [], 0.0
        for record in outcome.tries:
            now += record.duration_s
            if record.backoff_s:
                now += record.backoff_s
                sleep_ends.append(now)
        assert sleep_ends and all(end < 2.0 for end in sleep_ends)
        assert outcome.tries[-1].backoff_s == 0.0


@pytest.mark.asyncio
async def test_retry_after_that_ends_past_the_deadline_stops_at_once() -> None:
    time = FakeTime()
    outcome = await RetryPolicy(RetryConfig()).run(
        failing(time, error(ErrorType.RATE_LIMITED, retry_after_s=5.0)),
        deadline=2.0,
        clock=time,
        sleep=time.sleep,
    )
    assert outcome.stop is StopReason.DEADLINE and time.slept == []


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", [ErrorType.CLIENT_ERROR, ErrorType.PROTOCOL])
async def test_client_and_protocol_errors_are_never_retried(kind: ErrorType) -> None:
    time = FakeTime()
    outcome = await RetryPolicy(RetryConfig()).run(
        failing(time, error(kind)), deadline=None, clock=time, sleep=time.sleep
    )
    assert outcome.stop is StopReason.NOT_RETRYABLE and len(outcome.tries) == 1 and time.slept == []


@pytest.mark.asyncio
async def test_class_and_overall_attempt_limits() -> None:
    time = FakeTime()
    # Defaults: a timeout is not retried on the same tier.
    outcome = await RetryPolicy(RetryConfig()).run(
        failing(time, error(ErrorType.TIMEOUT)), deadline=None, clock=time, sleep=time.sleep
    )
    assert outcome.stop is StopReason.ATTEMPTS and len(outcome.tries) == 1
    # Alternating classes each under their own limit still stop at the overall max_attempts.
    errors = [error(ErrorType.CONNECTION), error(ErrorType.SERVER_ERROR)] * 5
    outcome = await RetryPolicy(RetryConfig(max_attempts=3)).run(
        failing(time, *errors), deadline=None, clock=time, sleep=time.sleep
    )
    assert outcome.stop is StopReason.ATTEMPTS and len(outcome.tries) == 3


@pytest.mark.asyncio
async def test_refused_permit_stops_before_calling() -> None:
    time = FakeTime()
    permits = iter([True, False])
    outcome = await RetryPolicy(RetryConfig()).run(
        failing(time, error(ErrorType.CONNECTION)),
        deadline=None,
        clock=time,
        sleep=time.sleep,
        permit=lambda: next(permits),
    )
    assert outcome.stop is StopReason.REFUSED and len(outcome.tries) == 1


@pytest.mark.asyncio
async def test_other_exceptions_propagate() -> None:
    async def broken() -> str:
        raise RuntimeError("caller bug")

    with pytest.raises(RuntimeError, match="caller bug"):
        await RetryPolicy(RetryConfig()).run(broken, deadline=None)


def _config(**resilience: object) -> TierHealth:
    config = parse_config(
        {
            "tiers": [
                {
                    "name": "small",
                    "provider": "openai",
                    "base_url": "http://x",
                    "model": "s",
                    "latency_slo_ms": 500,
                },
                {"name": "large", "provider": "openai", "base_url": "http://x", "model": "l"},
            ],
            "resilience": resilience,
        }
    )
    return TierHealth(config, clock=_CLOCK, rng=random.Random(0))


_CLOCK = FakeTime()


@pytest.mark.asyncio
async def test_tier_health_call_feeds_breaker_and_latency() -> None:
    health = _config(
        breaker={"min_calls": 2, "window_calls": 4, "failure_rate": 0.75}, latency_window={"min_samples": 1}
    )
    time = FakeTime()
    outcome = await health.call(
        "small",
        failing(time, error(ErrorType.SERVER_ERROR), took_s=0.2),
        deadline=None,
        clock=time,
        sleep=time.sleep,
    )
    assert outcome.ok and len(outcome.tries) == 2
    snapshot = health.breaker("small").snapshot()
    assert (snapshot.calls, snapshot.failures) == (2, 1)
    quantiles = health.latency("small").quantiles()
    assert quantiles is not None and quantiles.p50_ms == pytest.approx(200.0)

    # A client error is the request's fault: not counted against the tier.
    await health.call(
        "small", failing(time, error(ErrorType.CLIENT_ERROR)), deadline=None, clock=time, sleep=time.sleep
    )
    assert health.breaker("small").snapshot().calls == 2

    # Two more server errors open the circuit; the next call is refused before it is made.
    config_calls = 0

    async def counted() -> str:
        nonlocal config_calls
        config_calls += 1
        raise error(ErrorType.SERVER_ERROR)

    await health.call("small", counted, deadline=None, clock=time, sleep=time.sleep)
    assert health.breaker("small").state is BreakerState.OPEN
    refused = await health.call("small", counted, deadline=None, clock=time, sleep=time.sleep)
    assert refused.stop is StopReason.REFUSED and refused.tries == ()
    assert config_calls == 2
    assert not health.usable("small") and health.usable("large")
    assert [s.breaker.tier for s in health.snapshot()] == ["small", "large"]


@pytest.mark.asyncio
async def test_tier_health_uses_the_tier_slo_as_slow_threshold() -> None:
    health = _config(breaker={"min_calls": 2, "window_calls": 2}, latency_window={"min_samples": 2})
    time = FakeTime()
    for _ in range(2):
        await health.call("small", failing(time, took_s=0.6), deadline=None, clock=time, sleep=time.sleep)
        await health.call("large", failing(time, took_s=0.6), deadline=None, clock=time, sleep=time.sleep)
    assert health.breaker("small").state is BreakerState.OPEN  # 600 ms > its 500 ms SLO
    assert health.breaker("large").state is BreakerState.CLOSED  # default threshold 10 s
    assert health.usable("large", latency_budget_ms=1000) and not health.usable(
        "large", latency_budget_ms=500
    )
