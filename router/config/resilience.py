"""Config sections of upstream resilience: retries with backoff, circuit breakers, latency windows."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tierwise.router.config.strict import StrictSection


class Backoff(StrictSection):
    """Retries of one error class: full-jitter exponential backoff, sleep ~ U(0, min(cap, base * 2**n))."""

    max_attempts: int = Field(ge=1, description="most calls to one tier that may fail with this class")
    base_s: float = Field(gt=0)
    cap_s: float = Field(gt=0)


class RetryConfig(StrictSection):
    """Retries on the same tier before the fallback chain moves on; all inside the request deadline."""

    max_attempts: int = Field(3, ge=1, description="most calls to one tier per request, the first included")
    rate_limited: Backoff = Backoff(max_attempts=3, base_s=0.5, cap_s=8.0)
    server_error: Backoff = Backoff(max_attempts=2, base_s=0.1, cap_s=2.0)
    # A timed-out call already spent its timeout: the next tier is the better bet.
    timeout: Backoff = Backoff(max_attempts=1, base_s=0.1, cap_s=1.0)
    connection: Backoff = Backoff(max_attempts=3, base_s=0.05, cap_s=1.0)
    max_retry_after_s: float = Field(
        20.0, ge=0, description="a longer Retry-After is not waited for: the next tier is tried"
    )


class BreakerConfig(StrictSection):
    """Per-tier circuit breaker (resilience4j's parameters); slow means over the tier's latency_slo_ms."""

    enabled: bool = True
    window: Literal["count", "time"] = "count"
    window_calls: int = Field(20, gt=0, description="count window: the last N calls")
    window_s: float = Field(60.0, gt=0, description="time window: the calls of the last N seconds")
    min_calls: int = Field(10, gt=0, description="calls in the window before it can trip")
    failure_rate: float = Field(0.5, gt=0, le=1)
    slow_call_rate: float = Field(0.5, gt=0, le=1)
    slow_call_ms: float = Field(
        10_000.0, gt=0, description="slow-call threshold of tiers without latency_slo_ms"
    )
    open_s: float = Field(30.0, gt=0, description="how long an open circuit refuses calls")
    half_open_calls: int = Field(3, gt=0, description="probe calls let through when half-open")

    @model_validator(mode="after")
    def _can_trip(self) -> BreakerConfig:
        if self.window == "count" and self.min_calls > self.window_calls:
            raise ValueError("min_calls must not exceed window_calls: the circuit could never open")
        return self


class LatencyWindowConfig(StrictSection):
    """Per-tier latency estimate: quantiles over the most recent samples."""

    samples: int = Field(200, gt=0)
    max_age_s: float = Field(
        300.0, gt=0, description="older samples are dropped, so a tier can go cold again"
    )
    min_samples: int = Field(20, gt=0, description="fewer samples: the tier is cold and allowed")


class ResilienceConfig(StrictSection):
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    latency_window: LatencyWindowConfig = LatencyWindowConfig()
