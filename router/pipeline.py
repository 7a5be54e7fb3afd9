"""The request pipeline, top to bottom (ARCHITECTURE.md, "The request's way through").

The server authenticates and validates (steps 1-2) and hands a ``RequestSpec``
here; ``route`` runs the decision (steps 5-9) and ``complete`` / ``stream``
go on to call the tier with fallbacks and account for it (steps 10-12).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from decimal import Decimal

from router.config import Config, TierConfig
from router.errors import ServiceError, StreamBroken, UpstreamDeadline, UpstreamUnavailable
from router.outcome import Attempt, Completion, Decision, Latency, StreamDelta
from router.policies.base import RoutingContext, RoutingPolicy, TierOption
from router.pricing import cost_usd, expected_cost_usd
from router.providers.base import ChatCall, ChatResult, Provider, ProviderError, StreamFinish, TextDelta
from router.tokens import TokenCounter
from router.types import RequestSpec, TokenUsage
from router.upstream_errors import attempt_from_error, rejection_for

StreamItem = Decision | StreamDelta | Completion


class Pipeline:
    def __init__(
        self,
        config: Config,
        providers: Mapping[str, Provider],
        policy: RoutingPolicy,
        tokens: TokenCounter,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        missing = [t.name for t in config.tiers if t.name not in providers]
        if missing:
            raise ValueError(f"no provider for tiers {missing}")
        self._config = config
        self._providers = providers
        self._policy = policy
        self._tokens = tokens
        self._clock = clock

    @property
    def policy(self) -> RoutingPolicy:
        return self._policy

    # -- steps 5-9: decide -------------------------------------------------

    async def route(self, spec: RequestSpec, request_id: str) -> Decision:
        # 5 tokens
        input_tokens = self._tokens.count_messages(spec.messages, self._config.tiers[0].model)
        options = self._options(spec)
        # 8-9 classify and choose the tier (pinned tiers skip the policy)
        if spec.tier is not None:
            tier_name, reason, p_adequate, version = spec.tier, "pinned", {}, ""
        else:
            context = RoutingContext(
                request=spec,
                input_tokens=input_tokens,
                candidates=options,
                quality_target=self._quality_target(spec),
            )
            choice = self._policy.choose(context)
            tier_name, reason = choice.tier, choice.reason
            p_adequate, version = dict(choice.p_adequate), choice.model_version
        tier = self._config.tier(tier_name)
        return Decision(
            request_id=request_id,
            tier=tier.name,
            model=tier.model,
            provider=tier.provider,
            reason=reason,
            policy=self._policy.name if spec.tier is None else "pinned",
            estimated_input_tokens=input_tokens,
            estimated_cost_usd=self._expected_cost(tier, spec, input_tokens),
            p_adequate=p_adequate,
            model_version=version,
        )

    def _quality_target(self, spec: RequestSpec) -> float:
        if spec.quality_target is not None:
            return spec.quality_target
        return self._config.routing.default_quality_target

    def _options(self, spec: RequestSpec) -> list[TierOption]:
        """Tiers that can serve the request at all, cheapest first."""
        options = []
        for tier in self._config.tiers:
            if spec.max_tokens is not None and spec.max_tokens > tier.max_output_tokens:
                continue
            tokens = self._tokens.count_messages(spec.messages, tier.model)
            options.append(
                TierOption(
                    tier.name, tier.model, self._expected_cost(tier, spec, tokens), tier.max_output_tokens
                )
            )
        if not options:  # validation guarantees one tier admits max_tokens
            raise ServiceError("no tier admits the requested max_tokens")
        return options

    def _expected_cost(self, tier: TierConfig, spec: RequestSpec, input_tokens: int) -> Decimal:
        output = min(spec.max_tokens or tier.max_output_tokens, self._config.routing.expected_output_tokens)
        return expected_cost_usd(tier.price, input_tokens, output)

    def _chain(self, decision: Decision, spec: RequestSpec) -> list[TierConfig]:
        """The chosen tier, then (unless pinned) every stronger tier that admits the request."""
        tiers = list(self._config.tiers)
        start = [t.name for t in tiers].index(decision.tier)
        if spec.tier is not None or not self._config.routing.fallback:
            return [tiers[start]]
        chain = [tiers[start]]
        for tier in tiers[start + 1 :]:
            if spec.max_tokens is None or spec.max_tokens <= tier.max_output_tokens:
                chain.append(tier)
        return chain

    # -- steps 10-11: call and account --------------------------------------

    def _call(self, tier: TierConfig, spec: RequestSpec, deadline: float | None) -> ChatCall:
        timeout = tier.timeout_s
        if deadline is not None:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise UpstreamDeadline(
                    f"the request deadline passed before tier {tier.name!r} could be called"
                )
            timeout = min(timeout, remaining)
        return ChatCall(
            model=tier.model,
            messages=spec.messages,
            timeout_s=timeout,
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            stop=spec.stop,
        )

    def _usage(
        self, tier: TierConfig, spec: RequestSpec, reported: TokenUsage | None, text: str
    ) -> TokenUsage:
        if reported is not None:
            return reported
        return TokenUsage(
            input_tokens=self._tokens.count_messages(spec.messages, tier.model),
            output_tokens=self._tokens.count_text(text, model=tier.model),
        )

    def _finish(
        self,
        decision: Decision,
        spec: RequestSpec,
        tier: TierConfig,
        result: ChatResult,
        attempts: list[Attempt],
        timing: tuple[float, float, float | None],
    ) -> Completion:
        started, upstream_s, first_token_at = timing
        now = self._clock()
        usage = self._usage(tier, spec, result.usage, result.content)
        total_ms = (now - started) * 1000
        ttft_ms = (first_token_at - started) * 1000 if first_token_at is not None else total_ms
        after_first = (now - first_token_at) * 1000 if first_token_at is not None else 0.0
        tpot_ms = after_first / (usage.output_tokens - 1) if usage.output_tokens > 1 else 0.0
        if decision.tier != tier.name:
            decision = replace(
                decision, tier=tier.name, model=tier.model, provider=tier.provider, reason="fallback"
            )
        return Completion(
            decision=decision,
            content=result.content,
            finish_reason=result.finish_reason,
            usage=usage,
            usage_reported=result.usage is not None,
            cost_usd=cost_usd(tier.price, usage),
            latency=Latency(
                total_ms=total_ms, upstream_ms=upstream_s * 1000, ttft_ms=ttft_ms, tpot_ms=tpot_ms
            ),
            attempts=tuple(attempts),
        )

    async def complete(
        self, spec: RequestSpec, request_id: str, *, started: float, deadline: float | None
    ) -> Completion:
        decision = await self.route(spec, request_id)
        attempts: list[Attempt] = []
        upstream_s = 0.0
        for tier in self._chain(decision, spec):
            call = self._call(tier, spec, deadline)
            t0 = self._clock()
            try:
                result = await self._providers[tier.name].complete(call)
            except ProviderError as exc:
                elapsed = self._clock() - t0
                upstream_s += elapsed
                attempts.append(attempt_from_error(tier, exc, elapsed))
                if not exc.retryable:
                    raise rejection_for(tier, exc, attempts) from None
                continue
            elapsed = self._clock() - t0
            upstream_s += elapsed
            attempts.append(Attempt(tier.name, tier.model, True, elapsed * 1000))
            return self._finish(decision, spec, tier, result, attempts, (started, upstream_s, None))
        raise _exhausted(attempts)

    async def stream(
        self, spec: RequestSpec, request_id: str, *, started: float, deadline: float | None
    ) -> AsyncIterator[StreamItem]:
        decision = await self.route(spec, request_id)
        yield decision
        attempts: list[Attempt] = []
        upstream_s = 0.0
        for tier in self._chain(decision, spec):
            call = self._call(tier, spec, deadline)
            t0 = self._clock()
            first_token_at: float | None = None
            parts: list[str] = []
            finish: StreamFinish | None = None
            try:
                async for event in self._providers[tier.name].stream(call):
                    if isinstance(event, TextDelta):
                        if first_token_at is None:
                            first_token_at = self._clock()
                        parts.append(event.text)
                        yield StreamDelta(event.text)
                    else:
                        finish = event
            except ProviderError as exc:
                elapsed = self._clock() - t0
                upstream_s += elapsed
                attempts.append(attempt_from_error(tier, exc, elapsed))
                if first_token_at is not None:
                    # Text already reached the caller: say so rather than truncate silently.
                    raise StreamBroken(
                        f"tier {tier.name!r} ({tier.model}) failed mid-stream after "
                        f"{sum(map(len, parts))} characters: {exc.message}",
                        attempts,
                    ) from None
                if not exc.retryable:
                    raise rejection_for(tier, exc, attempts) from None
                continue
            elapsed = self._clock() - t0
            upstream_s += elapsed
            assert finish is not None  # providers end every stream with a StreamFinish or raise
            attempts.append(Attempt(tier.name, tier.model, True, elapsed * 1000))
            result = ChatResult("".join(parts), finish.finish_reason, finish.usage, finish.model)
            yield self._finish(decision, spec, tier, result, attempts, (started, upstream_s, first_token_at))
            return
        raise _exhausted(attempts)


def _exhausted(attempts: list[Attempt]) -> ServiceError:
    detail = "; ".join(f"tier {a.tier!r}: {a.error_type}: {a.error}" for a in attempts)
    return UpstreamUnavailable(f"no tier could answer ({detail})", attempts)
