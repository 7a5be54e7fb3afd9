"""One CLIENT span per upstream attempt, a child of the request's span.

``traced_providers`` wraps each tier's provider, so every call the request path makes to it
(each retry of a tier, each fallback tier, each tier a stream tries) gets its own span without
the pipeline knowing: the place of the attempt in its request comes from the log that
``Tracing.request_span`` keeps in the context. The span carries the GenAI attributes of the call
and its outcome, never the messages, the answer's text or provider error bodies (which may echo
the prompt). With tracing off the providers are handed back unwrapped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from urllib.parse import urlsplit

from opentelemetry.trace import Span
from opentelemetry.util.types import AttributeValue

from tierwise.router.config import TierConfig
from tierwise.router.observability.tracing import (
    Tracing,
    attempt_span_name,
    genai_attributes,
    mark_error,
    next_attempt,
)
from tierwise.router.providers.base import ChatCall, ChatResult, Provider, StreamEvent, StreamFinish
from tierwise.router.providers.errors import ProviderError
from tierwise.router.types import TokenUsage


def traced_providers(
    tiers: Sequence[TierConfig], providers: Mapping[str, Provider], tracing: Tracing
) -> Mapping[str, Provider]:
    """Each tier's provider behind an attempt-span wrapper; ``providers`` itself when tracing is off."""
    if not tracing.enabled:
        return providers
    return {tier.name: TracedProvider(providers[tier.name], tier, tracing) for tier in tiers}


class TracedProvider:
    """A ``Provider`` that opens a span around each call of the one it wraps."""

    def __init__(self, inner: Provider, tier: TierConfig, tracing: Tracing) -> None:
        self.kind = inner.kind
        self._inner = inner
        self._tier = tier.name
        self._tracing = tracing
        address = urlsplit(tier.base_url)
        self._server: dict[str, AttributeValue] = {"server.address": address.hostname or ""}
        if address.port is not None:
            self._server["server.port"] = address.port

    async def complete(self, call: ChatCall) -> ChatResult:
        span = self._start(call, stream=False)
        try:
            result = await self._inner.complete(call)
        except BaseException as exc:
            _end_failed(span, exc)
            raise
        _end_ok(span, result.model, result.finish_reason, result.usage)
        return result

    async def stream(self, call: ChatCall) -> AsyncIterator[StreamEvent]:
        span = self._start(call, stream=True)
        events = self._inner.stream(call)
        finish: StreamFinish | None = None
        try:
            async for event in events:
                if isinstance(event, StreamFinish):
                    finish = event
                yield event
        except BaseException as exc:  # GeneratorExit too: the consumer left mid-stream
            _end_failed(span, exc)
            raise
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()  # now, not when collected: the upstream connection goes back at once
        if finish is None:  # providers raise PROTOCOL instead; a span still ends
            _end_ok(span, "", "", None)
        else:
            _end_ok(span, finish.model, finish.finish_reason, finish.usage)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def _start(self, call: ChatCall, *, stream: bool) -> Span:
        place = next_attempt(self._tier)
        attributes: dict[str, AttributeValue] = {
            **genai_attributes(self.kind, call.model),
            **self._server,
            "tierwise.tier": self._tier,
            "tierwise.attempt": place.number,
            "tierwise.tier_attempt": place.tier_try,
            "tierwise.retry": place.tier_try > 1,
            "tierwise.fallback": place.fallback,
            "tierwise.stream": stream,
        }
        if call.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = call.max_tokens
        if call.temperature is not None:
            attributes["gen_ai.request.temperature"] = call.temperature
        return self._tracing.start_attempt(attempt_span_name(call.model), attributes)


def _end_ok(span: Span, model: str, finish_reason: str, usage: TokenUsage | None) -> None:
    span.set_attribute("tierwise.outcome", "ok")
    if model:
        span.set_attribute("gen_ai.response.model", model)
    if finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", (finish_reason,))
    if usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
    span.end()


def _end_failed(span: Span, exc: BaseException) -> None:
    """The error's class, never its message: an upstream's error body may quote the prompt."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        span.set_attribute("tierwise.outcome", "cancelled")
        mark_error(span, "cancelled")
    elif isinstance(exc, ProviderError):
        span.set_attribute("tierwise.outcome", "error")
        error_type = exc.error_type.value
        if exc.http_status is None:
            mark_error(span, error_type)
        else:
            span.set_attribute("http.response.status_code", exc.http_status)
            mark_error(span, error_type, f"{error_type} (HTTP {exc.http_status})")
    else:
        span.set_attribute("tierwise.outcome", "error")
        mark_error(span, type(exc).__qualname__)
    span.end()
