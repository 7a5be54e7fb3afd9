"""The request pipeline, top to bottom (ARCHITECTURE.md, "The request's way through").

The server authenticates and validates (steps 1-2) and hands a ``RequestSpec``
here. ``_plan`` runs steps 3-9 (budget, experiment arm, tokens, tier choice
among the healthy tiers); ``route`` returns that decision, while ``complete`` and ``stream`` go
on to call the tiers of the fallback chain with retries and account for the
call (steps 10-11).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from tierwise.cache.batching import BatchingEmbedder
from tierwise.cache.embedder import Vector
from tierwise.router.budgets.manager import BudgetManager, BudgetReservation
from tierwise.router.caching import CacheUse, ResponseCache
from tierwise.router.call_progress import CallProgress, PromptTokens
from tierwise.router.config import Config, TierConfig
from tierwise.router.deciding import decide
from tierwise.router.errors import ServiceError, StreamBroken, UpstreamDeadline, UpstreamUnavailable
from tierwise.router.experiments.arms import ExperimentRouter
from tierwise.router.outcome import (
    Attempt,
    CacheHitInfo,
    Completion,
    Decision,
    Latency,
    PartialAnswer,
    StreamDelta,
)
from tierwise.router.output_bound import bounded_call, output_bound, warn_on_overrun, worst_case
from tierwise.router.policies.base import RoutingPolicy, TierOption
from tierwise.router.pricing import cost_usd, expected_cost_usd
from tierwise.router.providers.base import ChatCall, ChatResult, Provider, StreamFinish
from tierwise.router.providers.errors import ProviderError
from tierwise.router.request_work import RequestWork
from tierwise.router.resilience import StopReason, TierHealth
from tierwise.router.tokens import TokenCounter
from tierwise.router.tool_checks import admits
from tierwise.router.types import RequestSpec, TokenUsage
from tierwise.router.upstream_errors import attempt_from_error, circuit_open_attempt, exhausted, rejection_for

StreamItem = Decision | StreamDelta | Completion


@dataclass(frozen=True, slots=True)
class _Plan:
    decision: Decision
    chain: tuple[TierConfig, ...]  # the chosen tier first, then its fallbacks
    reservation: BudgetReservation
    cache_use: CacheUse | None  # how this request may read and fill the cache
    prompt: PromptTokens
    embedding: Vector | None  # the request's one embedding; the completion carries it to the learning loop


class Pipeline:
    def __init__(
        self,
        config: Config,
        providers: Mapping[str, Provider],
        policy: RoutingPolicy,
        tokens: TokenCounter,
        *,
        budgets: BudgetManager,
        health: TierHealth,
        embedder: BatchingEmbedder | None = None,
        cache: ResponseCache | None = None,
        experiments: ExperimentRouter | None = None,
        work: RequestWork | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        missing = [t.name for t in config.tiers if t.name not in providers]
        if missing:
            raise ValueError(f"no provider for tiers {missing}")
        self._config = config
        self._providers = providers
        self._policy = policy
        self._tokens = tokens
        self._work = work or RequestWork(config, tokens)  # without workers: every step on the loop
        self._budgets = budgets
        self._health = health
        self._cache = cache
        self._experiments = experiments
        # One embedding per request serves the cache and the classifier; none when neither needs it.
        needs_embedding = policy.needs_embedding or (experiments is not None and experiments.needs_embedding)
        self._embedder = embedder if (cache is not None or needs_embedding) else None
        if self._embedder is None and needs_embedding:
            raise ValueError("a routing policy (the service's or an experiment arm's) needs an embedder")
        self._clock = clock
        self._rank = {t.name: i for i, t in enumerate(config.tiers)}

    @property
    def policy(self) -> RoutingPolicy:
        return self._policy

    @property
    def work(self) -> RequestWork:
        return self._work

    async def prompt(self, spec: RequestSpec) -> PromptTokens:
        """The prompt counted by the request workers; ``PromptTooLong`` over server.max_prompt_tokens."""
        return await self._work.prompt(spec)

    # -- steps 3-9: decide ----------------------------------------------------

    async def route(self, spec: RequestSpec, request_id: str, prompt: PromptTokens | None = None) -> Decision:
        plan = await self._plan(spec, request_id, prompt)
        # Route only decides: hold nothing against the budget.
        await self._budgets.release(plan.reservation)
        return plan.decision

    async def _plan(self, spec: RequestSpec, request_id: str, prompt: PromptTokens | None) -> _Plan:
        # 4 experiment: the unit's arm may change the policy, the quality target and the cache
        arm = self._experiments.route_for(spec) if self._experiments is not None else None
        policy = arm.policy if arm is not None and arm.policy is not None else self._policy
        cache = self._cache if arm is None or arm.cache else None
        # 5 tokens (before 3: the budget reserves the estimated cost)
        prompt = prompt or await self._work.prompt(spec)  # counted off the loop, refused if too long
        input_tokens = prompt.of(self._config.tiers[0])
        options = self._options(spec, prompt)
        # 3 budget
        reservation = await self._reserve(spec, options, prompt)
        try:
            degrade = reservation.degrade
            if degrade is not None and degrade.max_tier is not None:
                options = [
                    o for o in options if self._rank[o.name] <= self._rank[degrade.max_tier]
                ] or options[:1]
            # 9 (health) tiers whose circuit is closed, and whose p95 fits the latency budget
            healthy = [o for o in options if self._health.usable(o.name)]
            if not healthy and spec.tier is None:
                raise UpstreamUnavailable(
                    "every tier's circuit is open: " + ", ".join(repr(o.name) for o in options)
                )
            fitting = [o for o in healthy if self._health.usable(o.name, spec.latency_budget_ms)]
            candidates = fitting or healthy
            # 6 embed, once for the cache, the classifier and the learning loop (every arm: judged
            # requests of any arm become training rows only with their embedding)
            embedding = await self._embed(spec)
            # 7 cache: exact, then verified semantic, inside the request's partition
            arm_key = f"{arm.assignment.experiment}/{arm.assignment.arm}" if arm is not None else ""
            cache_use = (
                None
                if cache is None or embedding is None
                else await self._work.cache_use(cache, spec, embedding, arm_key)
            )
            hit = None if cache_use is None or cache is None else await cache.lookup(cache_use)
            # 8-9 classify and choose the tier (a pinned tier skips the policy)
            decision = await decide(
                self._work,
                self._config,
                policy,
                lambda tier: self._expected_cost(tier, spec, prompt),
                spec,
                request_id,
                input_tokens,
                candidates,
                degrade,
                embedding,
                arm,
            )
            if hit is not None:
                decision = self._served_from_cache(decision, prompt, hit)
            chain = self._chain(decision.tier, spec, candidates)
        except BaseException:
            await self._budgets.release(reservation)
            raise
        return _Plan(decision, chain, reservation, cache_use, prompt, embedding)

    async def _embed(self, spec: RequestSpec) -> Vector | None:
        if self._embedder is None or not spec.last_user_text:
            return None
        return await self._embedder.embed(await self._work.embedding_text(spec.last_user_text))

    def _served_from_cache(self, decision: Decision, prompt: PromptTokens, hit: CacheHitInfo) -> Decision:
        """A hit costs nothing upstream and saves what the chosen tier would have cost."""
        tier = self._config.tier(decision.tier)
        usage = TokenUsage(prompt.of(tier), hit.usage.output_tokens)
        saved = cost_usd(tier.price, usage)
        if self._cache is not None:
            self._cache.record_saving(hit.entry_id, float(saved))
        return replace(decision, cache_hit=hit, reason="cache-hit", saved_cost_usd=saved)

    def _options(self, spec: RequestSpec, prompt: PromptTokens) -> list[TierOption]:
        """Tiers that can serve the request at all, cheapest first."""
        options = [
            TierOption(t.name, t.model, self._expected_cost(t, spec, prompt), t.max_output_tokens)
            for t in self._config.tiers
            if admits(t, spec)
        ]
        if not options:  # validation guarantees one tier admits the request
            raise ServiceError("no tier admits the request's max_tokens and fields")
        return options

    def _expected_output(self, tier: TierConfig, spec: RequestSpec) -> int:
        return min(output_bound(tier, spec), self._config.routing.expected_output_tokens)

    def _expected_cost(self, tier: TierConfig, spec: RequestSpec, prompt: PromptTokens) -> Decimal:
        return expected_cost_usd(tier.price, prompt.of(tier), self._expected_output(tier, spec))

    async def _reserve(
        self, spec: RequestSpec, options: list[TierOption], prompt: PromptTokens
    ) -> BudgetReservation:
        """Reserve the worst case of the chain's tiers under the output bound (overspend: ``output_bound``)."""
        if spec.tier is not None:
            options = [o for o in options if o.name == spec.tier] or options
        usd, tokens = worst_case([self._config.tier(o.name) for o in options], spec, prompt)
        return await self._budgets.reserve(spec.tenant, spec.feature, usd, tokens, key=spec.api_key)

    def _chain(self, chosen: str, spec: RequestSpec, candidates: list[TierOption]) -> tuple[TierConfig, ...]:
        """The chosen tier, then (unless pinned) every stronger candidate tier."""
        first = self._config.tier(chosen)
        if spec.tier is not None or not self._config.routing.fallback:
            return (first,)
        stronger = [self._config.tier(o.name) for o in candidates if self._rank[o.name] > self._rank[chosen]]
        return (first, *stronger)

    # -- steps 10-11: call and account ----------------------------------------

    def _call(
        self,
        tier: TierConfig,
        spec: RequestSpec,
        deadline: float | None,
        later: Sequence[TierConfig],
        streamed: bool = False,
    ) -> ChatCall:
        """One try's call: output bounded, timeout by ``resilience.timeouts`` (``later``: rest of the chain)."""
        left = None if deadline is None else deadline - self._clock()
        if left is not None and left <= 0:
            raise UpstreamDeadline(f"the request deadline passed before tier {tier.name!r} could answer")
        timeout = self._health.try_timeout_s(
            tier.name, [t.name for t in later], left, streamed=streamed, bound=lambda t: output_bound(t, spec)
        )
        return bounded_call(tier, spec, timeout)

    def _finish(
        self,
        plan: _Plan,
        tier: TierConfig,
        result: ChatResult,
        attempts: list[Attempt],
        timing: tuple[float, float, float | None],
    ) -> Completion:
        started, upstream_s, first_token_at = timing
        decision = plan.decision
        now = self._clock()
        usage = plan.prompt.usage(tier, result)
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
            embedding=plan.embedding,
            tool_calls=result.tool_calls,
        )

    async def _settle(
        self, plan: _Plan, answer: Completion | PartialAnswer | None, progress: CallProgress
    ) -> None:
        """Charge the budget for the answer once per request (None, no tier reached: release). The
        charge goes on ``progress`` before the shielded store call: a cancel landing there changes
        nothing, and the server books it. An answer obtained is owed even if its caller left."""
        if not progress.charge(answer):
            return
        if answer is None:
            await self._budgets.release(plan.reservation)
            return
        tokens = answer.usage.input_tokens + answer.usage.output_tokens
        await self._budgets.settle(plan.reservation, answer.cost_usd, tokens)

    async def complete(
        self,
        spec: RequestSpec,
        request_id: str,
        *,
        started: float,
        deadline: float | None,
        progress: CallProgress | None = None,
        prompt: PromptTokens | None = None,
    ) -> Completion:
        """When this raises (even cancelled mid-settle), ``progress.billed()`` is what the budget got."""
        plan = await self._plan(spec, request_id, prompt)
        if plan.decision.cache_hit is not None:
            await self._budgets.release(plan.reservation)
            return self._cached(plan, plan.decision.cache_hit, started)
        progress = progress or CallProgress()
        try:
            completion = await self._call_chain(plan, spec, started, deadline, progress)
        except BaseException:
            # A call the caller abandoned mid-try costs its prompt; one that failed costs nothing.
            await self._settle(plan, progress.billed(), progress)
            raise
        await self._settle(plan, completion, progress)
        self._store(plan, completion)
        return completion

    def _cached(self, plan: _Plan, hit: CacheHitInfo, started: float) -> Completion:
        total_ms = (self._clock() - started) * 1000
        return Completion(
            decision=plan.decision,
            content=hit.content,
            finish_reason=hit.finish_reason,
            usage=TokenUsage(),
            usage_reported=True,
            cost_usd=Decimal(0),
            latency=Latency(total_ms=total_ms, upstream_ms=0.0, ttft_ms=total_ms, tpot_ms=0.0),
            attempts=(),
            embedding=plan.embedding,
        )

    def _store(self, plan: _Plan, completion: Completion) -> None:
        # 12 store: the cache refuses truncated or otherwise incomplete answers itself.
        if self._cache is not None and plan.cache_use is not None:
            self._cache.store(plan.cache_use, completion)

    async def _call_chain(
        self, plan: _Plan, spec: RequestSpec, started: float, deadline: float | None, progress: CallProgress
    ) -> Completion:
        attempts: list[Attempt] = []
        upstream_s = 0.0
        for position, tier in enumerate(plan.chain):
            later = plan.chain[position + 1 :]
            try:
                outcome = await self._health.call(
                    tier.name,
                    lambda: self._attempt(tier, later, spec, deadline, plan.prompt, progress),  # noqa: B023 - awaited here
                    output_tokens=lambda result: plan.prompt.usage(tier, result).output_tokens,  # noqa: B023
                    deadline=deadline,
                    clock=self._clock,
                )
            except UpstreamDeadline as exc:
                progress.ended()  # the try the deadline cut short is not billed
                raise UpstreamDeadline(exc.message, attempts) from None
            for attempt in outcome.tries:
                upstream_s += attempt.duration_s
                if attempt.error is None:
                    attempts.append(Attempt(tier.name, tier.model, True, attempt.duration_s * 1000))
                else:
                    attempts.append(attempt_from_error(tier, attempt.error, attempt.duration_s))
            if outcome.ok and outcome.value is not None:
                return self._finish(plan, tier, outcome.value, attempts, (started, upstream_s, None))
            if outcome.stop is StopReason.REFUSED and not outcome.tries:
                attempts.append(circuit_open_attempt(tier))
            elif outcome.stop is StopReason.NOT_RETRYABLE and outcome.error is not None:
                raise rejection_for(tier, outcome.error, attempts)
        raise exhausted(attempts, None if deadline is None else deadline - self._clock())

    async def _attempt(
        self,
        tier: TierConfig,
        later: Sequence[TierConfig],
        spec: RequestSpec,
        deadline: float | None,
        prompt: PromptTokens,
        progress: CallProgress,
    ) -> ChatResult:
        """One try of a unary call, its timeout cut to what is left of the deadline at that try.
        It is billable if the caller leaves while it is in flight, not once it failed (a caller who
        leaves during the back-off before the next try owes nothing)."""
        call = self._call(tier, spec, deadline, later)
        progress.start(tier, prompt)
        try:
            result = await self._providers[tier.name].complete(call)
        except ProviderError:
            progress.ended()
            raise
        progress.ended()
        warn_on_overrun(tier.name, call.max_tokens, result.usage)
        return result

    async def stream(
        self,
        spec: RequestSpec,
        request_id: str,
        *,
        started: float,
        deadline: float | None,
        progress: CallProgress | None = None,
        prompt: PromptTokens | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        plan = await self._plan(spec, request_id, prompt)
        hit = plan.decision.cache_hit
        if hit is not None:
            await self._budgets.release(plan.reservation)
            yield plan.decision
            yield StreamDelta(hit.content)
            yield self._cached(plan, hit, started)
            return
        progress = progress or CallProgress()
        try:
            yield plan.decision
            async for item in self._stream_chain(plan, spec, started, deadline, progress):
                if isinstance(item, Completion):
                    await self._settle(plan, item, progress)
                    self._store(plan, item)
                yield item
        finally:
            # A no-op once the completion was charged, even if a cancel landed during that charge.
            await self._settle(plan, progress.billed(), progress)

    async def _stream_chain(
        self, plan: _Plan, spec: RequestSpec, started: float, deadline: float | None, progress: CallProgress
    ) -> AsyncIterator[StreamDelta | Completion]:
        """Fall back to the next tier only while no text has reached the caller; no retries in a stream."""
        attempts: list[Attempt] = []
        upstream_s = 0.0
        for position, tier in enumerate(plan.chain):
            breaker = self._health.breaker(tier.name)
            if not breaker.allow():
                attempts.append(circuit_open_attempt(tier))
                continue
            call = self._call(tier, spec, deadline, plan.chain[position + 1 :], streamed=True)
            t0 = self._clock()
            first_token_at: float | None = None
            finish: StreamFinish | None = None
            progress.start(tier, plan.prompt)
            try:
                async for event in self._providers[tier.name].stream(call):
                    if isinstance(event, StreamFinish):
                        finish = event
                        continue
                    if first_token_at is None:
                        first_token_at = self._clock()
                    yield progress.add(event)
            except ProviderError as exc:
                progress.ended()
                elapsed = self._clock() - t0
                upstream_s += elapsed
                self._health.observe(tier.name, elapsed, exc)
                attempts.append(attempt_from_error(tier, exc, elapsed))
                if first_token_at is not None:
                    # Text already reached the caller: say so rather than truncate silently.
                    raise StreamBroken(
                        f"tier {tier.name!r} ({tier.model}) failed mid-stream after "
                        f"{len(progress.text())} characters: {exc.message}",
                        attempts,
                    ) from None
                if not exc.retryable:
                    raise rejection_for(tier, exc, attempts) from None
                continue
            except BaseException:
                breaker.release()  # cancelled by the caller: no verdict on the tier
                raise
            elapsed = self._clock() - t0
            upstream_s += elapsed
            ttft = None if first_token_at is None else first_token_at - t0
            assert finish is not None  # providers end every stream with a StreamFinish or raise
            warn_on_overrun(tier.name, call.max_tokens, finish.usage)
            attempts.append(Attempt(tier.name, tier.model, True, elapsed * 1000))
            result = ChatResult(
                progress.text(), finish.finish_reason, finish.usage, finish.model, progress.tool_calls()
            )
            usage = plan.prompt.usage(tier, result)  # the unary timeout projects its duration to a bound
            self._health.observe(tier.name, elapsed, None, ttft, usage.output_tokens)
            yield self._finish(plan, tier, result, attempts, (started, upstream_s, first_token_at))
            return
        raise exhausted(attempts, None if deadline is None else deadline - self._clock())
