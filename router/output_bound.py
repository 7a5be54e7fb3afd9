"""The output bound: every upstream call is sent one, and hard budgets reserve it.

Every upstream call carries ``max_tokens``: the caller's, else the tier's
``max_output_tokens`` (both wire protocols, unary and streamed). Any tier of the fallback chain may end up answering
and at most one answer is billed, so the request reserves the largest, over the
tiers its chain is drawn from, of price x (prompt estimate + output bound).
Settling replaces the reservation with the charge, which is what the upstream
reported, so a hard limit L ends at most at

    spent <= L + sum over admitted requests of max(0, charge - reservation), where
    charge - reservation <= input price x (reported input - estimated input)
                            + output price x (reported output - output bound)

With an upstream that keeps to max_tokens the overspend is only the error of the
input-token estimate (tiktoken's count against the upstream's). One that ignores it
is charged what it reported (the budget and the ledger hold the real spend) and its
overrun adds to the overspend, until the limit refuses further requests; each such
reply is logged. Routing's estimates (``Decision.estimated_cost_usd``) assume
``routing.expected_output_tokens`` instead: they rank tiers, they do not bound spend.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from decimal import Decimal

from tierwise.router.call_progress import PromptTokens
from tierwise.router.config import TierConfig
from tierwise.router.pricing import expected_cost_usd
from tierwise.router.providers.base import ChatCall
from tierwise.router.types import RequestSpec, TokenUsage

log = logging.getLogger("tierwise.budgets")


def output_bound(tier: TierConfig, spec: RequestSpec) -> int:
    """The most output tokens a call to ``tier`` may produce: sent as max_tokens, reserved in full."""
    return spec.max_tokens or tier.max_output_tokens


def bounded_call(tier: TierConfig, spec: RequestSpec, timeout_s: float) -> ChatCall:
    """The call of one try of ``tier`` for ``spec``, its output bounded."""
    return ChatCall(
        model=tier.model,
        messages=spec.messages,
        timeout_s=timeout_s,
        max_tokens=output_bound(tier, spec),
        temperature=spec.temperature,
        stop=spec.stop,
        tools_json=spec.tools_json,
        tool_choice=spec.tool_choice,
        parallel_tool_calls=spec.parallel_tool_calls,
        response_format_json=spec.response_format_json,
        top_p=spec.top_p,
        seed=spec.seed,
    )


def worst_case(tiers: Sequence[TierConfig], spec: RequestSpec, prompt: PromptTokens) -> tuple[Decimal, int]:
    """The USD and the tokens to reserve: each the largest over ``tiers``."""
    usd = max(expected_cost_usd(t.price, prompt.of(t), output_bound(t, spec)) for t in tiers)
    tokens = max(prompt.of(t) + output_bound(t, spec) for t in tiers)
    return usd, tokens


def warn_on_overrun(tier: str, max_tokens: int | None, usage: TokenUsage | None) -> None:
    """Log a reply whose reported output exceeds the bound it was sent (it is still charged in full)."""
    if usage is not None and max_tokens is not None and usage.output_tokens > max_tokens:
        log.warning(
            "upstream output over the max_tokens sent; charged as reported",
            extra={"tier": tier, "max_tokens": max_tokens, "output_tokens": usage.output_tokens},
        )
