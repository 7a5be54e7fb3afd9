"""Resilience for upstream calls: retries with backoff, per-tier circuit breakers, latency estimates."""

from router.resilience.breaker import BreakerSnapshot, BreakerState, CircuitBreaker, StateChange
from router.resilience.latency import LatencyEstimate, LatencyTracker, Quantiles
from router.resilience.retry import RetryOutcome, RetryPolicy, StopReason, TryRecord
from router.resilience.tiers import TierHealth, TierSnapshot

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
