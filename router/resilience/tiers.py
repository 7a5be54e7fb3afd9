"""Every tier's breaker and latency tracker, and a guarded call that ties them to the retry policy."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tierwise.router.config import Config, TierConfig
from tierwise.router.providers.errors import ErrorType, ProviderError
from tierwise.router.resilience.breaker import BreakerSnapshot, BreakerState, CircuitBreaker, Listener
from tierwise.router.resilience.latency import LatencyEstimate, LatencyTracker, Metric
from tierwise.router.resilience.retry import Clock, RetryOutcome, RetryPolicy, Sleep
from tierwise.router.resilience.timeouts import tier_timeout_s, try_timeout_s

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TierSnapshot:
    breaker: BreakerSnapshot
    latency: LatencyEstimate


class TierHealth:
    def __init__(
        self, config: Config, *, clock: Clock = time.monotonic, rng: random.Random | None = None
    ) -> None:
        resilience = config.resilience
        self.retry = RetryPolicy(resilience.retry, rng)
        self._breakers = {
            tier.name: CircuitBreaker(
                tier.name,
                resilience.breaker,
                (tier.latency_slo_ms or resilience.breaker.slow_call_ms) / 1000,
                clock=clock,
            )
            for tier in config.tiers
        }
        self._latency = {
            tier.name: LatencyTracker(tier.name, resilience.latency_window, clock=clock)
            for tier in config.tiers
        }
        self._tiers: dict[str, TierConfig] = {tier.name: tier for tier in config.tiers}

    def breaker(self, tier: str) -> CircuitBreaker:
        return self._breakers[tier]

    def latency(self, tier: str) -> LatencyTracker:
        return self._latency[tier]

    def timeout_s(self, tier: str, metric: Metric = "total", output_bound: int | None = None) -> float:
        """``tier``'s own timeout for one try (``resilience.timeouts``): by its recent p99 of ``metric``
        (``ttft`` for a stream, whose timeout bounds the wait for each piece, not the whole); a unary
        try's with its ``output_bound`` (the max_tokens sent) follows the calls projected to it."""
        config = self._tiers[tier]
        if metric == "total" and output_bound is not None:
            return tier_timeout_s(config, self._latency[tier].projected_p99_ms(output_bound))
        estimate = self._latency[tier].quantiles(metric)
        return tier_timeout_s(config, None if estimate is None else estimate.p99_ms)

    def try_timeout_s(
        self,
        tier: str,
        later: Sequence[str],
        remaining_s: float | None,
        *,
        streamed: bool = False,
        bound: Callable[[TierConfig], int] | None = None,
    ) -> float:
        """One try's timeout on ``tier``, the ``later`` tiers of the chain keeping their time within
        ``remaining_s`` (what is left of the caller's deadline; None: no deadline). ``bound`` gives
        each tier's output bound (the max_tokens it is sent), which a unary try's timeout scales with."""
        metric: Metric = "ttft" if streamed else "total"

        def own(name: str) -> float:
            return self.timeout_s(name, metric, None if bound is None else bound(self._tiers[name]))

        return try_timeout_s(own(tier), [own(t) for t in later], remaining_s)

    def add_listener(self, listener: Listener) -> None:
        """Hear every tier's breaker state changes (the metrics exporter)."""
        for breaker in self._breakers.values():
            breaker.add_listener(listener)

    def usable(self, tier: str, latency_budget_ms: float | None = None, metric: Metric = "total") -> bool:
        """May the policy pick ``tier``: circuit not open, and (when there is a budget) p95 fits it."""
        if self._breakers[tier].state is BreakerState.OPEN:
            return False
        return latency_budget_ms is None or self._latency[tier].fits(latency_budget_ms, metric)

    def observe(
        self,
        tier: str,
        duration_s: float,
        error: ProviderError | None,
        ttft_s: float | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """One permitted call's outcome (a success's ``output_tokens`` when counted); a client error
        says nothing about the tier's health."""
        breaker = self._breakers[tier]
        if error is None:
            breaker.record_success(duration_s)
            ttft_ms = None if ttft_s is None else ttft_s * 1000
            self._latency[tier].record(duration_s * 1000, ttft_ms, output_tokens)
        elif error.error_type is ErrorType.CLIENT_ERROR:
            breaker.release()
        else:
            breaker.record_failure(duration_s)

    async def call(
        self,
        tier: str,
        call: Callable[[], Awaitable[T]],
        *,
        deadline: float | None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        output_tokens: Callable[[T], int] | None = None,
    ) -> RetryOutcome[T]:
        """``call`` with retries, each try permitted by the tier's breaker and reported to it (with
        its answer's ``output_tokens``, for the unary timeout's projection to an output bound)."""
        breaker = self._breakers[tier]
        counted: list[int | None] = [None]  # the output tokens of the try that just succeeded

        async def guarded() -> T:
            counted[0] = None
            try:
                value = await call()
                if output_tokens is not None:
                    counted[0] = output_tokens(value)
                return value
            except ProviderError:
                raise
            except BaseException:
                breaker.release()  # cancelled, or the caller's own error: no verdict on the tier
                raise

        return await self.retry.run(
            guarded,
            deadline=deadline,
            clock=clock,
            sleep=sleep,
            permit=breaker.allow,
            observe=lambda duration, error: self.observe(tier, duration, error, output_tokens=counted[0]),
        )

    def snapshot(self) -> list[TierSnapshot]:
        return [
            TierSnapshot(self._breakers[name].snapshot(), self._latency[name].estimate())
            for name in self._breakers
        ]
