"""How an upstream failure is recorded as an attempt and reported to the caller."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc

from tierwise.router.config import TierConfig
from tierwise.router.errors import ServiceError, UpstreamDeadline, UpstreamRejected, UpstreamUnavailable
from tierwise.router.outcome import Attempt
from tierwise.router.providers.errors import ProviderError

log = logging.getLogger("tierwise.upstream")

# An upstream's client error means the request (or our credentials) is wrong
# for that tier; the caller needs to know which.
_REJECTION_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.FAILED_PRECONDITION,
    403: grpc.StatusCode.FAILED_PRECONDITION,
    404: grpc.StatusCode.FAILED_PRECONDITION,
}


def attempt_from_error(tier: TierConfig, error: ProviderError, elapsed_s: float) -> Attempt:
    """The attempt callers see; the log line also names the upstream's address, which they do not."""
    log.warning(
        "upstream call failed",
        extra={"tier": tier.name, "upstream": error.upstream or tier.base_url, "error": error.message},
    )
    return Attempt(
        tier=tier.name,
        model=tier.model,
        ok=False,
        latency_ms=elapsed_s * 1000,
        error_type=error.error_type.value,
        error=error.message,
        http_status=error.http_status or 0,
    )


def rejection_for(tier: TierConfig, error: ProviderError, attempts: Sequence[Attempt]) -> UpstreamRejected:
    code = _REJECTION_CODES.get(error.http_status or 0, grpc.StatusCode.FAILED_PRECONDITION)
    status = f"HTTP {error.http_status}" if error.http_status else error.error_type.value
    return UpstreamRejected(
        code, f"tier {tier.name!r} ({tier.model}) rejected the request ({status}): {error.message}", attempts
    )


def circuit_open_attempt(tier: TierConfig) -> Attempt:
    return Attempt(
        tier=tier.name,
        model=tier.model,
        ok=False,
        latency_ms=0.0,
        error_type="circuit_open",
        error=f"the circuit of tier {tier.name!r} is open: it failed or was slow too often recently",
    )


# Less than this left of the caller's deadline when the chain ends: the deadline ended it.
DEADLINE_SPENT_S = 0.05


def exhausted(attempts: Sequence[Attempt], deadline_left_s: float | None = None) -> ServiceError:
    """Every tier of the chain was tried (or skipped): name each and why. When the caller's deadline
    is (all but) spent, the last tier was given what was left of it and timed out with it: that is
    the deadline's doing (DEADLINE_EXCEEDED), not a sign that no tier is up (UNAVAILABLE)."""
    detail = "; ".join(f"tier {a.tier!r}: {a.error_type}: {a.error}" for a in attempts)
    if deadline_left_s is not None and deadline_left_s < DEADLINE_SPENT_S:
        return UpstreamDeadline(
            f"the request deadline passed while the tiers were tried ({detail})", attempts
        )
    return UpstreamUnavailable(f"no tier could answer ({detail})", attempts)
