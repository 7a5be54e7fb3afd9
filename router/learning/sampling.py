"""Judging a share of served requests, after their response was returned.

``Sampler.offer`` runs on the request path and only decides (a hash of the
request id against the arm's or tier's rate) and queues. Worker tasks then,
per sampled request: ask a stronger tier the same prompt (the shadow call:
would the stronger tier have done better?), have the judge score the served
answer and the shadow answer, store each score in the feedback store (source
``judge``, with the tier, model and model version: what training reads), and
book every call's spend in the ledger under the sampling feature.

Every shadow and judge call first reserves the most it can cost (its token
cap at the tier's price) against ``JudgeBudget``; a call that does not fit is
skipped, so the sampling spend of a window never exceeds ``budget_usd``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from tierwise.router.config import Config, TierConfig
from tierwise.router.feedback.store import FeedbackRecord, FeedbackStore
from tierwise.router.learning.judge import Judge, JudgeItem, Judgment
from tierwise.router.ledger.record import SpendRecord
from tierwise.router.ledger.spend_ledger import SpendLedger
from tierwise.router.outcome import Completion, Decision
from tierwise.router.pricing import cost_usd, expected_cost_usd
from tierwise.router.providers.base import ChatCall, Provider
from tierwise.router.providers.errors import ProviderError
from tierwise.router.tokens import TokenCounter
from tierwise.router.types import RequestSpec, TokenUsage

log = logging.getLogger("tierwise.sampling")


def window_start(window: Literal["day", "month"], now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if window == "month":
        start = start.replace(day=1)
    return start.timestamp()


class JudgeBudget:
    """The sampling spend of the current window: spent + reserved never exceeds the limit."""

    def __init__(self, limit_usd: Decimal, window: Literal["day", "month"]) -> None:
        self.limit_usd = limit_usd
        self._window = window
        self._period = window_start(window, time.time())
        self.spent_usd = Decimal(0)
        self.reserved_usd = Decimal(0)

    def _roll(self) -> None:
        period = window_start(self._window, time.time())
        if period != self._period:
            self._period, self.spent_usd = period, Decimal(0)

    @property
    def period_start(self) -> float:
        return self._period

    def seed(self, spent_usd: Decimal) -> None:
        """What this window already spent (read from the ledger at start: a restart does not reset it)."""
        self.spent_usd = spent_usd

    def reserve(self, amount: Decimal) -> bool:
        self._roll()
        if self.spent_usd + self.reserved_usd + amount > self.limit_usd:
            return False
        self.reserved_usd += amount
        return True

    def settle(self, reserved: Decimal, actual: Decimal) -> None:
        self.reserved_usd -= reserved
        self.spent_usd += actual


@dataclass(frozen=True, slots=True)
class _Sampled:
    spec: RequestSpec
    completion: Completion


def _comparable_text(spec: RequestSpec, completion: Completion) -> bool:
    """A shadow call replays the messages and sampling settings, and a judge reads text: a request
    with tools, tool turns or a response format, or an answer that is a tool call, has no answer a
    shadow tier would give alike, and a request with images asks about what the judge's prompt
    cannot show, so neither is judged (counted as ``skipped_tools``)."""
    if completion.tool_calls or spec.tools_json or spec.response_format_json or spec.has_images:
        return False
    return not any(m.tool_calls or m.tool_call_id for m in spec.messages)


def _draw(request_id: str) -> float:
    """A uniform number in [0, 1) from the request id: the same request is always in or out."""
    return (
        int.from_bytes(hashlib.sha256(f"tierwise-sample:{request_id}".encode()).digest()[:8], "big") / 2**64
    )


class Sampler:
    def __init__(
        self,
        config: Config,
        providers: Mapping[str, Provider],
        judge: Judge,
        feedback: FeedbackStore,
        ledger: SpendLedger | None,
        tokens: TokenCounter,
    ) -> None:
        self._config = config
        self._settings = config.learning.sampling
        self._providers = providers
        self.judge = judge
        self._feedback = feedback
        self._ledger = ledger
        self._tokens = tokens
        self.budget = JudgeBudget(self._settings.budget_usd, self._settings.window)
        self._rank = {t.name: i for i, t in enumerate(config.tiers)}
        self._queue: asyncio.Queue[_Sampled] = asyncio.Queue(self._settings.max_queued)
        self._workers: list[asyncio.Task[None]] = []
        self.counts: Counter[str] = Counter()
        # Since this process started (the budget's ``spent_usd`` is per window, seeded from the ledger).
        self.spent_usd = {"shadow": Decimal(0), "judge": Decimal(0)}

    # -- the request path ----------------------------------------------------

    def rate(self, decision: Decision) -> float:
        settings = self._settings
        if decision.arm and decision.arm in settings.rate_by_arm:
            return settings.rate_by_arm[decision.arm]
        return settings.rate_by_tier.get(decision.tier, settings.rate)

    def offer(self, spec: RequestSpec, completion: Completion) -> None:
        """Queue the request for judging if it is drawn; never blocks."""
        decision = completion.decision
        if decision.cache_hit is not None or _draw(decision.request_id) >= self.rate(decision):
            return
        if not _comparable_text(spec, completion):
            self.counts["skipped_tools"] += 1
            return
        try:
            self._queue.put_nowait(_Sampled(spec, completion))
        except asyncio.QueueFull:
            self.counts["skipped_queue_full"] += 1
            return
        self.counts["sampled"] += 1

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        if self._ledger is not None:
            since = self.budget.period_start
            totals = await self._ledger.totals(
                since, time.time() + 1, filters={"feature": self._settings.feature}
            )
            self.budget.seed(sum((t.cost_usd for t in totals), Decimal(0)))
        self._workers = [
            asyncio.create_task(self._work(), name=f"sampling-{i}") for i in range(self._settings.concurrency)
        ]

    async def drain(self) -> None:
        """Wait until every sampled request so far has been judged."""
        await self._queue.join()

    async def aclose(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._queue.qsize():
            log.info("sampled requests not judged before shutdown", extra={"requests": self._queue.qsize()})

    # -- the workers -----------------------------------------------------------

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._judge_request(item)
            except Exception:
                log.exception(
                    "judging a sampled request failed",
                    extra={"request_id": item.completion.decision.request_id},
                )
            finally:
                self._queue.task_done()

    def shadow_tier(self, served: str) -> TierConfig | None:
        tiers, rank = self._config.tiers, self._rank[served]
        if rank == len(tiers) - 1:
            return tiers[0] if self._settings.shadow_cheapest_when_strongest and len(tiers) > 1 else None
        if self._settings.shadow == "strongest":
            return tiers[-1]
        if self._settings.shadow == "stronger":
            return tiers[rank + 1]
        return None

    async def _judge_request(self, item: _Sampled) -> None:
        decision = item.completion.decision
        answers = [(self._config.tier(decision.tier), item.completion.content, "served")]
        shadow = self.shadow_tier(decision.tier)
        if shadow is not None:
            text = await self._shadow(item, shadow)
            if text is not None:
                answers.append((shadow, text, "shadow"))
        for tier, text, role in answers:
            judge_item = JudgeItem(decision.request_id, item.spec.messages, text, tier.name, tier.model)
            reserved = self.judge.max_cost_usd(judge_item)
            if not self.budget.reserve(reserved):
                self.counts["skipped_budget"] += 1
                continue
            judgment = await self.judge.judge(judge_item)
            self.budget.settle(reserved, judgment.cost_usd)
            self.spent_usd["judge"] += judgment.cost_usd
            self._book_judge(item, judgment, role, tier)
            if judgment.score is None:
                self.counts["judge_failures"] += 1
                log.warning(
                    "judge failure", extra={"request_id": decision.request_id, "error": judgment.error}
                )
                continue
            await self._feedback.record(self._feedback_record(item, judgment, tier, role))
            self.counts["judgments"] += 1

    async def _shadow(self, item: _Sampled, tier: TierConfig) -> str | None:
        spec = item.spec
        max_output = min(spec.max_tokens or tier.max_output_tokens, tier.max_output_tokens)
        input_tokens = self._tokens.count_messages(spec.messages, tier.model, encoding=tier.encoding)
        reserved = expected_cost_usd(tier.price, input_tokens, max_output)
        if not self.budget.reserve(reserved):
            self.counts["skipped_budget"] += 1
            return None
        call = ChatCall(
            tier.model, spec.messages, self._settings.timeout_s, max_output, spec.temperature, spec.stop
        )
        try:
            result = await self._providers[tier.name].complete(call)
        except ProviderError as exc:
            self.budget.settle(reserved, Decimal(0))
            self.counts["shadow_failures"] += 1
            log.warning("shadow call failed", extra={"tier": tier.name, "error": exc.message})
            return None
        usage = result.usage or TokenUsage(
            input_tokens, self._tokens.count_text(result.content, model=tier.model)
        )
        spent = cost_usd(tier.price, usage)
        self.budget.settle(reserved, spent)
        self.spent_usd["shadow"] += spent
        self.counts["shadow_calls"] += 1
        self._book(item, "shadow", tier, usage, spent)
        return result.content

    def _book_judge(self, item: _Sampled, judgment: Judgment, role: str, judged: TierConfig) -> None:
        if not judgment.tier:
            return  # no model was called (the replay judge): nothing spent
        error = "" if judgment.score is not None else "judge-failure"
        self._book(
            item, f"judge-{role}", self._config.tier(judgment.tier), judgment.usage, judgment.cost_usd, error
        )

    def _book(
        self, item: _Sampled, kind: str, tier: TierConfig, usage: TokenUsage, spent: Decimal, error: str = ""
    ) -> None:
        if self._ledger is None:
            return
        decision = item.completion.decision
        self._ledger.record(
            SpendRecord(
                request_id=f"{decision.request_id}:{kind}",
                ts=time.time(),
                tenant=item.spec.tenant,
                feature=self._settings.feature,
                tags={"learning": kind, "for_request": decision.request_id},
                experiment=decision.experiment,
                arm=decision.arm,
                tier=tier.name,
                model=tier.model,
                provider=tier.provider,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached_input_tokens=usage.cached_input_tokens,
                cost_usd=spent,
                error_type=error,
                attempts=1,
                reason="learning",
            )
        )

    def _feedback_record(
        self, item: _Sampled, judgment: Judgment, tier: TierConfig, role: str
    ) -> FeedbackRecord:
        decision = item.completion.decision
        assert judgment.score is not None
        return FeedbackRecord(
            request_id=decision.request_id,
            tenant=item.spec.tenant,
            score=judgment.score,
            source="judge",
            metadata={
                "tier": tier.name,
                "model": tier.model,
                "role": role,  # served: the answer the caller got; shadow: the counterfactual
                "model_version": decision.model_version,
                "served_tier": decision.tier,
                "judge": judgment.judge,
                "experiment": decision.experiment,
                "arm": decision.arm,
            },
        )

    def stats(self) -> dict[str, object]:
        return {
            **{k: self.counts[k] for k in ("sampled", "judgments", "judge_failures", "shadow_calls")},
            **{k: self.counts[k] for k in ("shadow_failures", "skipped_budget", "skipped_queue_full")},
            "skipped_tools": self.counts["skipped_tools"],
            "spent_usd": str(self.budget.spent_usd),
            "shadow_spent_usd": str(self.spent_usd["shadow"]),
            "judge_spent_usd": str(self.spent_usd["judge"]),
            "budget_usd": str(self.budget.limit_usd),
            "judge": self.judge.label,
        }
