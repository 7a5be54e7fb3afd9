"""Turn what the pipeline hands back (a Completion, a Decision, a failure) into a SpendRecord.

Savings follow one rule: a cache hit saves what its tier would have cost; a
routed call saves the difference to the strongest (last) tier for the same
usage, never less than zero; a pinned call saves nothing (the caller chose).
"""

from __future__ import annotations

import functools
import os
import secrets
import time
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import TypedDict

from tierwise.router.config import Config
from tierwise.router.errors import ServiceError
from tierwise.router.experiments.assignment import Assigner
from tierwise.router.ledger.record import SpendRecord, hash_user
from tierwise.router.outcome import Attempt, Completion, Decision, PartialAnswer
from tierwise.router.pricing import cost_usd
from tierwise.router.types import CacheMode, RequestSpec, TokenUsage

_NANO = Decimal("1e-9")
_MS_PER_HOUR = Decimal(3_600_000)


def load_user_salt(env_name: str, path: Path) -> bytes:
    """The salt for ``hash_user``: the environment's (shared by replicas), else one kept at ``path``."""
    configured = os.environ.get(env_name, "")
    if configured:
        return configured.encode()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_bytes()
    with os.fdopen(fd, "wb") as file:
        file.write(salt)
        file.flush()
        os.fsync(file.fileno())
    return salt


def _cache_result(spec: RequestSpec, decision: Decision | None) -> str:
    if decision is not None and decision.cache_hit is not None:
        return decision.cache_hit.kind
    return "bypass" if spec.cache_mode is CacheMode.BYPASS else "miss"


def _fell_back(attempts: Sequence[Attempt]) -> bool:
    return len({a.tier for a in attempts}) > 1


class _Common(TypedDict):
    """The fields every record takes from the request and its decision."""

    request_id: str
    ts: float
    tenant: str
    feature: str
    tags: dict[str, str]
    user_hash: str
    experiment: str
    arm: str
    tier: str
    model: str
    provider: str
    cache_result: str
    reason: str
    api_key: str


class SpendRecordBuilder:
    def __init__(self, config: Config, user_salt: bytes) -> None:
        self._config = config
        self._compute_per_ms = config.ledger.compute_usd_per_hour / _MS_PER_HOUR
        self._strongest = config.tiers[-1]
        self._tiers = {tier.name: tier for tier in config.tiers}
        # A request that failed before its decision existed still counts in its experiment arm.
        self._assigner = Assigner(config.experiments)
        # Users recur: hash each once (bounded, so a stream of new ids cannot grow it).
        self._user_hash = functools.lru_cache(maxsize=4096)(lambda user: hash_user(user, user_salt))

    @classmethod
    def from_config(cls, config: Config) -> SpendRecordBuilder:
        return cls(config, load_user_salt(config.ledger.user_salt_env, config.store.path / "user_salt"))

    def _router_cost(self, overhead_ms: float) -> Decimal:
        # Wall-clock overhead times the machine's price: an upper estimate under concurrency.
        if not self._compute_per_ms:
            return Decimal(0)
        return (Decimal(repr(overhead_ms)) * self._compute_per_ms).quantize(_NANO, ROUND_HALF_EVEN)

    def _common(
        self, spec: RequestSpec, request_id: str, ts: float | None, decision: Decision | None, tier_name: str
    ) -> _Common:
        tier = self._tiers.get(tier_name)
        if decision is not None:
            experiment, arm = decision.experiment, decision.arm
        else:
            assignment = self._assigner.assign(spec) if self._assigner else None
            experiment, arm = (assignment.experiment, assignment.arm) if assignment else ("", "")
        return _Common(
            request_id=request_id,
            ts=time.time() if ts is None else ts,
            tenant=spec.tenant,
            feature=spec.feature,
            tags=dict(spec.metadata),
            user_hash=self._user_hash(spec.user),
            experiment=experiment,
            arm=arm,
            tier=tier_name,
            model=tier.model if tier else "",
            provider=tier.provider if tier else "",
            cache_result=_cache_result(spec, decision),
            reason=decision.reason if decision else "",
            api_key=spec.api_key,
        )

    def _hit_saving(self, decision: Decision) -> Decimal:
        hit = decision.cache_hit
        assert hit is not None
        if decision.saved_cost_usd > 0:
            return decision.saved_cost_usd
        return cost_usd(self._tiers[decision.tier].price, hit.usage)

    def for_completion(
        self, spec: RequestSpec, completion: Completion, *, ts: float | None = None
    ) -> SpendRecord:
        """A Complete / CompleteStream that returned an answer (from a tier or from the cache)."""
        decision, usage, latency = completion.decision, completion.usage, completion.latency
        if decision.cache_hit is not None:
            saved = self._hit_saving(decision)
        elif spec.tier is not None:
            saved = Decimal(0)
        else:
            saved = max(Decimal(0), cost_usd(self._strongest.price, usage) - completion.cost_usd)
        return SpendRecord(
            **self._common(spec, decision.request_id, ts, decision, decision.tier),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cost_usd=completion.cost_usd,
            saved_usd=saved,
            router_cost_usd=self._router_cost(latency.overhead_ms),
            total_ms=latency.total_ms,
            upstream_ms=latency.upstream_ms,
            overhead_ms=latency.overhead_ms,
            ttft_ms=latency.ttft_ms,
            attempts=len(completion.attempts),
            fallback=_fell_back(completion.attempts),
        )

    def for_decision(
        self, spec: RequestSpec, decision: Decision, *, total_ms: float, ts: float | None = None
    ) -> SpendRecord:
        """A Route call: nothing was spent upstream; a cache hit still saved its tier's cost."""
        return SpendRecord(
            **self._common(spec, decision.request_id, ts, decision, decision.tier),
            saved_usd=self._hit_saving(decision) if decision.cache_hit is not None else Decimal(0),
            router_cost_usd=self._router_cost(total_ms),
            total_ms=total_ms,
            overhead_ms=total_ms,
        )

    def for_failure(
        self,
        spec: RequestSpec,
        request_id: str,
        error: BaseException,
        *,
        total_ms: float,
        decision: Decision | None = None,
        partial: PartialAnswer | None = None,
        ts: float | None = None,
    ) -> SpendRecord:
        """A request that ended in an error status. Failed upstream attempts are not billed; what a
        tier was given and streamed before the stream broke or the caller left (``partial``) is."""
        attempts = error.attempts if isinstance(error, ServiceError) else ()
        status = error.code.name if isinstance(error, ServiceError) else "INTERNAL"
        tier_name = attempts[-1].tier if attempts else (decision.tier if decision else "")
        if partial is not None:
            tier_name = partial.tier
        usage = partial.usage if partial is not None else TokenUsage()
        upstream_ms = sum(a.latency_ms for a in attempts)
        overhead_ms = max(0.0, total_ms - upstream_ms)
        return SpendRecord(
            **self._common(spec, request_id, ts, decision, tier_name),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=partial.cost_usd if partial is not None else Decimal(0),
            router_cost_usd=self._router_cost(overhead_ms),
            total_ms=total_ms,
            upstream_ms=upstream_ms,
            overhead_ms=overhead_ms,
            status=status,
            error_type=attempts[-1].error_type if attempts else type(error).__name__,
            attempts=len(attempts),
            fallback=_fell_back(attempts),
        )
