"""Resilience for upstream calls: retries with backoff, per-tier circuit breakers, latency estimates,
and per-try timeouts that follow those estimates inside the caller's deadline."""

from tierwise.router.resilience.breaker import BreakerSnapshot, BreakerState, CircuitBreaker, StateChange
from tierwise.router.resilience.latency import LatencyEstimate, LatencyTracker, Quantiles
from tierwise.router.resilience.retry import RetryOutcome, RetryPolicy, StopReason, TryRecord
from tierwise.router.resilience.tiers import TierHealth, TierSnapshot
from tierwise.router.resilience.timeouts import tier_timeout_s, try_timeout_s

__all__ = [
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "LatencyEstimate",
    "LatencyTracker",
    "Quantiles",
    "RetryOutcome",
    "RetryPolicy",
    "StateChange",
    "StopReason",
    "TierHealth",
    "TierSnapshot",
    "TryRecord",
    "tier_timeout_s",
    "try_timeout_s",
]
