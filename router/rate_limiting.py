"""The rate limits on the request path: a request's charges, its token estimate being the budget's
worst case (the prompt the request workers counted, plus the output bound of the tiers that may
answer). Estimated only when a TPM limit applies to the caller."""

from __future__ import annotations

from tierwise.router.auth import Caller
from tierwise.router.call_progress import PromptTokens
from tierwise.router.config import Config
from tierwise.router.output_bound import worst_case
from tierwise.router.rate_limits import Admission, KeyLimits, RateLimitGate
from tierwise.router.tool_checks import admits
from tierwise.router.types import RequestSpec


class RequestLimits:
    def __init__(self, config: Config, gate: RateLimitGate) -> None:
        self._config = config
        self._gate = gate

    def admission(self, caller: Caller, spec: RequestSpec, prompt: PromptTokens | None) -> Admission:
        """``prompt``: the request's prompt as the request workers counted it (off the event loop);
        None for a request that calls no tier (Route), which counts against RPM limits only."""
        return self._gate.admission(
            spec.tenant,
            KeyLimits(caller.key, caller.rpm, caller.tpm),
            None if prompt is None else (lambda: self._estimate(spec, prompt)),
        )

    def _estimate(self, spec: RequestSpec, prompt: PromptTokens) -> int:
        if spec.tier is not None:
            tiers = [self._config.tier(spec.tier)]
        else:  # the tiers the pipeline may route the request to (``Pipeline._options``)
            tiers = [t for t in self._config.tiers if admits(t, spec)]
        return worst_case(tiers, spec, prompt)[1]

    async def aclose(self) -> None:
        await self._gate.aclose()
