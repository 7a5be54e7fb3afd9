"""Config of the per-minute rate limits: per tenant here, per API key on ``auth.api_keys[]``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tierwise.router.config.strict import StrictSection


class RateLimit(StrictSection):
    """Requests and tokens per minute; unset: no limit of that kind."""

    rpm: int | None = Field(None, gt=0, description="requests per minute")
    tpm: int | None = Field(
        None, gt=0, description="tokens per minute: prompt estimate + output bound, corrected after the call"
    )


class RateLimitsConfig(StrictSection):
    """Shared across replicas in Redis with ``store.kind: redis``, else kept in the process."""

    tenants: dict[str, RateLimit] = Field(default_factory=dict, description="tenant -> its rpm and tpm")
    fail_mode: Literal["open", "closed"] = Field(
        "open", description="when the Redis store cannot be reached: admit unmetered (open) or refuse"
    )
    redis_timeout_s: float = Field(0.25, gt=0, description="the most one limit check waits on Redis")
    reconnect_min_s: float = Field(
        0.5, gt=0, description="after a failed check, Redis is not asked again for this long (doubling)"
    )
    reconnect_max_s: float = Field(30.0, gt=0, description="the longest such wait")
