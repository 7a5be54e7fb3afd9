"""What the request path asks of the rate limits: admit a request, or refuse it naming the limit
and the delay after which it would fit; then correct the token estimate with the real usage.

A request is charged one request on each RPM bucket that applies (its key's, its tenant's) and its
token estimate (the prompt plus the output bound, the budget's worst case) on each TPM bucket; all
of them or none. After the call the TPM buckets are corrected to what the call used: what the
estimate overstated is given back (``limiter``: at most what is left of the request's own charge),
what it understated (the input estimate's error, an upstream ignoring max_tokens) is charged then.
So admissions never pass a TPM limit by their estimates, and steady traffic counts what it used. The
correction goes off the request path (a task), so the answer does not wait
on it. When the shared store cannot be reached, ``rate_limits.fail_mode`` decides: open (the
default) admits unmetered, closed refuses with UNAVAILABLE; both are logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry, Counter

from tierwise.cache.backoff import Backoff, DownGate
from tierwise.router.config import Config
from tierwise.router.errors import RetryLater, ServiceError
from tierwise.router.outcome import PartialAnswer
from tierwise.router.rate_limits.limiter import (
    Admitted,
    Charge,
    MemoryRateLimiter,
    RateLimiter,
    RateLimitStoreUnavailable,
    Refusal,
    Scope,
)
from tierwise.router.rate_limits.redis_limiter import RedisRateLimiter

log = logging.getLogger("tierwise.rate_limits")


_NOUN = {"key": "API key", "tenant": "tenant"}
_UNIT = {"rpm": "requests per minute", "tpm": "tokens per minute"}


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """The caller's API key: its label (the bucket's name) and its own limits."""

    label: str
    rpm: int | None = None
    tpm: int | None = None


class RateLimited(RetryLater):
    """Over a rate limit. The message names the caller's own limit; the trailing metadata carries
    the delay after which the same request would be admitted (none when it never would)."""

    @classmethod
    def over(cls, refusal: Refusal) -> RateLimited:
        charge = refusal.charge
        limit = (
            f"{_NOUN[charge.scope]} {charge.name!r} is over its limit of {charge.limit} {_UNIT[charge.kind]}"
        )
        if charge.cost > charge.limit:
            return cls(
                f"rate limit: this request's estimated {charge.cost} tokens (prompt + max_tokens) exceed the "
                f"{charge.limit} {_UNIT[charge.kind]} of {_NOUN[charge.scope]} {charge.name!r}; "
                "lower max_tokens or shorten the prompt",
                None,
            )
        return cls(f"rate limit: {limit}; retry in {refusal.retry_after_s:.3f}s", refusal.retry_after_s)


class RateLimitStoreDown(ServiceError):
    """fail_mode closed and the shared store unreachable."""

    code = grpc.StatusCode.UNAVAILABLE


class RateLimitMetrics:
    """``tierwise_rate_limited_total`` by tenant, scope, name (the tenant or the key's label: from the
    config, or a stored key that has limits, which admins create: bounded) and kind; the tenant label lets a tenant's scrape key see its own series;
    ``tierwise_rate_limit_store_failures_total`` by what the fail mode decided (or a lost correction)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter(
            "tierwise_rate_limited",
            "Requests refused for a rate limit, by tenant, scope (key, tenant), name and kind (rpm, tpm).",
            ["tenant", "scope", "name", "kind"],
            registry=registry,
        )
        self.store_failures = Counter(
            "tierwise_rate_limit_store_failures",
            "Rate-limit checks the shared store could not answer, by the fail mode's decision.",
            ["decision"],
            registry=registry,
        )
        for decision in ("admitted", "refused", "correction_lost"):
            self.store_failures.labels(decision)


class Admission:
    """One request's charges: ``acquire`` takes them (the token estimate is made there, so that a
    failure to make it is the request's); ``settle`` corrects the estimate (a no-op unless taken)."""

    def __init__(
        self,
        gate: RateLimitGate,
        tenant: str,
        key: KeyLimits,
        tokens: Callable[[], int] | None,
    ) -> None:
        self._gate = gate
        self._request = (tenant, key, tokens)
        self._taken: list[tuple[Charge, float]] = []

    async def acquire(self) -> None:
        charges = self._gate.charges(*self._request)
        if charges:
            admitted = await self._gate.acquire(charges)
            if admitted is not None:
                self._taken = list(zip(charges, admitted.tats, strict=True))

    def settle(self, billed: PartialAnswer | None) -> None:
        used = 0 if billed is None else billed.usage.input_tokens + billed.usage.output_tokens
        for charge, tat in self._taken:
            if charge.kind == "tpm" and used != charge.cost:
                self._gate.adjust_later(charge, used - charge.cost, tat)
        self._taken = []


class RateLimitGate:
    def __init__(self, config: Config, limiter: RateLimiter, metrics: RateLimitMetrics) -> None:
        self._fail_mode = config.rate_limits.fail_mode
        self._tenants = config.rate_limits.tenants
        self._limiter = limiter
        self._metrics = metrics
        settings = config.rate_limits
        # After a failure the store is skipped for a while (the fail mode decides at once): an outage
        # costs one request a timeout now and then, not every request. Real time, whatever the clock.
        self._down = DownGate(Backoff(settings.reconnect_min_s, settings.reconnect_max_s))
        self._pending: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(
        cls, config: Config, registry: CollectorRegistry, clock: Callable[[], float] | None = None
    ) -> RateLimitGate:
        """``clock`` (seconds): tests freeze it; else monotonic in process, Redis's TIME when shared."""
        limiter: RateLimiter
        if config.store.kind == "redis":
            assert config.store.url is not None  # the config guarantees it
            limiter = RedisRateLimiter.from_url(config.store.url, config.rate_limits.redis_timeout_s, clock)
        else:
            limiter = MemoryRateLimiter() if clock is None else MemoryRateLimiter(clock)
        return cls(config, limiter, RateLimitMetrics(registry))

    def admission(self, tenant: str, key: KeyLimits, tokens: Callable[[], int] | None) -> Admission:
        """A request of ``tenant`` with API key ``key`` (its label and limits, from the config or
        the key store); ``tokens`` estimates its tokens, asked only when a TPM limit applies (None:
        the request calls no tier)."""
        return Admission(self, tenant, key, tokens)

    def charges(self, tenant: str, key: KeyLimits, tokens: Callable[[], int] | None) -> list[Charge]:
        limits: list[tuple[Scope, str, int | None, int | None]] = []
        if key.label and (key.rpm is not None or key.tpm is not None):
            limits.append(("key", key.label, key.rpm, key.tpm))
        if tenant in self._tenants:
            limits.append(("tenant", tenant, self._tenants[tenant].rpm, self._tenants[tenant].tpm))
        charges: list[Charge] = []
        estimate: int | None = None
        for scope, name, rpm, tpm in limits:
            if rpm is not None:
                charges.append(Charge(scope, name, tenant, "rpm", rpm, 1))
            if tpm is not None and tokens is not None:
                estimate = tokens() if estimate is None else estimate
                charges.append(Charge(scope, name, tenant, "tpm", tpm, estimate))
        return charges

    async def acquire(self, charges: Sequence[Charge]) -> Admitted | None:
        """What was taken (None: the store was down and the fail mode open); raises when refused."""
        if not self._down.ready():
            self._unchecked()
            return None
        try:
            answer = await self._limiter.acquire(charges)
        except RateLimitStoreUnavailable as exc:
            if self._down.down_until is None:  # logged once per outage, not per request
                log.warning(
                    "rate-limit store unreachable (fail_mode %s): requests are %s until it answers",
                    self._fail_mode,
                    "admitted unmetered" if self._fail_mode == "open" else "refused",
                    extra={"error": str(exc)},
                )
            self._down.failed()
            self._unchecked()
            return None
        if self._down.succeeded():
            log.warning("rate-limit store reachable again")
        if isinstance(answer, Admitted):
            return answer
        refusal = answer
        charge = refusal.charge
        self._metrics.refused.labels(charge.tenant, charge.scope, charge.name, charge.kind).inc()
        raise RateLimited.over(refusal)

    def _unchecked(self) -> None:
        self._metrics.store_failures.labels("admitted" if self._fail_mode == "open" else "refused").inc()
        if self._fail_mode == "closed":
            raise RateLimitStoreDown(
                "rate limit: the shared rate-limit store cannot be reached and rate_limits.fail_mode is closed"
            )

    def adjust_later(self, charge: Charge, tokens: int, tat: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a stream closed outside the loop: the correction is lost, harmlessly
            return
        task = loop.create_task(self._adjust(charge, tokens, tat))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _adjust(self, charge: Charge, tokens: int, tat: float) -> None:
        if not self._down.ready():  # an outage known already: counted, not tried, not logged again
            self._metrics.store_failures.labels("correction_lost").inc()
            return
        try:
            await self._limiter.adjust(charge, tokens, tat)
        except RateLimitStoreUnavailable as exc:
            self._metrics.store_failures.labels("correction_lost").inc()
            if self._down.down_until is None:
                log.warning(
                    "rate-limit store unreachable: a token correction is lost", extra={"error": str(exc)}
                )
            self._down.failed()

    async def aclose(self) -> None:
        """Let the corrections in flight land, then close the store's connection."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=5.0)
        await self._limiter.aclose()
