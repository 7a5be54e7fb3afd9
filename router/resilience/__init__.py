"""Resilience for upstream calls: retries with backoff, per-tier circuit breakers, latency estimates."""

from tierwise.router.resilience.breaker import BreakerSnapshot, BreakerState, CircuitBreaker, StateChange
from tierwise.router.resilience.latency import LatencyEstimate, LatencyTracker, Quantiles
from tierwise.router.resilience.retry import RetryOutcome, RetryPolicy, StopReason, TryRecord
from tierwise.router.resilience.tiers import TierHealth, TierSnapshot

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
]
