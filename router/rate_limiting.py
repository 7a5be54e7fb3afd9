"""The rate limits on the request path: a request's charges, its token estimate being the budget's
worst case (the prompt counted as the pipeline counts it, plus the output bound of the tiers that
may answer). Counted only when a TPM limit applies to the caller."""

from __future__ import annotations

from tierwise.router.auth import Caller
from tierwise.router.call_progress import PromptTokens
from tierwise.router.config import Config
from tierwise.router.output_bound import worst_case
from tierwise.router.rate_limits import Admission, KeyLimits, RateLimitGate
from tierwise.router.tokens import TokenCounter
from tierwise.router.tool_checks import admits
from tierwise.router.types import RequestSpec


class RequestLimits:
    def __init__(self, config: Config, gate: RateLimitGate, tokens: TokenCounter | None = None) -> None:
        self._config = config
        self._gate = gate
        self._tokens = tokens or TokenCounter()

    def admission(
        self,
        caller: Caller,
        spec: RequestSpec,
        prompt: PromptTokens | None = None,
        *,
        calls_tiers: bool = True,
    ) -> Admission:
        """``calls_tiers`` False (Route): the request counts against RPM limits only. ``prompt``: the
        request's prompt already counted (off the event loop), else counted here."""
        return self._gate.admission(
            spec.tenant,
            KeyLimits(caller.key, caller.rpm, caller.tpm),
            (lambda: self._estimate(spec, prompt)) if calls_tiers else None,
        )

    def _estimate(self, spec: RequestSpec, prompt: PromptTokens | None) -> int:
        if spec.tier is not None:
            tiers = [self._config.tier(spec.tier)]
        else:  # the tiers the pipeline may route the request to (``Pipeline._options``)
            tiers = [t for t in self._config.tiers if admits(t, spec)]
        return worst_case(tiers, spec, prompt or PromptTokens(self._tokens, spec))[1]

    async def aclose(self) -> None:
        await self._gate.aclose()
