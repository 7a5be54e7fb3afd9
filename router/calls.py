"""A Complete's work once a front has accepted the request, shared by the gRPC servicer and the
HTTP front: admission under the rate limits, the pipeline, the spend record and the log line.

Each front says how a failure reaches its caller through ``fail`` (a gRPC status, an HTTP error
body); it is awaited inside the request's span, after the failure was booked, and must raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import NoReturn

from tierwise.router.auth import Caller
from tierwise.router.call_progress import CallProgress, PromptTokens
from tierwise.router.errors import RequestCancelled, ServiceError
from tierwise.router.observability.logs import prompt_field
from tierwise.router.outcome import Completion, Decision, StreamDelta
from tierwise.router.rate_limiting import RequestLimits
from tierwise.router.rate_limits import Admission
from tierwise.router.service import Service
from tierwise.router.types import RequestSpec

log = logging.getLogger("tierwise.server")

Fail = Callable[[str, BaseException], Awaitable[NoReturn]]
StreamItem = Decision | StreamDelta | Completion
Metadata = Iterable[tuple[str, str | bytes]] | None


@dataclass(frozen=True, slots=True)
class Call:
    """An accepted request: what its span is named and where its trace context comes from
    (``metadata``), who sent it, what it asks, and how a failure reaches its front."""

    name: str
    metadata: Metadata
    caller: Caller
    spec: RequestSpec
    request_id: str
    started: float
    deadline: float
    fail: Fail


class Calls:
    def __init__(self, service: Service, limits: RequestLimits) -> None:
        self._service = service
        self._limits = limits

    def deadline(self, started: float, remaining_s: float | None) -> float:
        """The upstream deadline: what the caller left (``remaining_s``), at most the configured default."""
        default = self._service.config.server.default_timeout_s
        if remaining_s is None or math.isinf(remaining_s):
            return started + default
        return started + min(float(remaining_s), default)

    async def _admit(self, call: Call) -> tuple[PromptTokens, Admission]:
        """The prompt, counted by the request workers (too long: INVALID_ARGUMENT; none free:
        RESOURCE_EXHAUSTED) before the rate limits' token estimate reads it; then the admission."""
        prompt = await self._service.pipeline.prompt(call.spec)
        admission = self._limits.admission(call.caller, call.spec, prompt)
        await admission.acquire()
        return prompt, admission

    async def complete(self, call: Call) -> Completion:
        spec, request_id, started, deadline = call.spec, call.request_id, call.started, call.deadline
        accounting = self._service.accounting
        progress = CallProgress()
        admission: Admission | None = None
        with accounting.request_span(call.name, call.metadata) as span:
            try:
                prompt, admission = await self._admit(call)
                completion = await self._service.pipeline.complete(
                    spec, request_id, started=started, deadline=deadline, progress=progress, prompt=prompt
                )
            except asyncio.CancelledError:
                # The caller left: the upstream call in flight still costs its prompt, and an answer
                # already charged to the budget costs what it was charged (progress says which).
                accounting.failed(spec, request_id, cancelled(), started, span, progress.billed())
                raise
            except Exception as exc:
                accounting.failed(spec, request_id, exc, started, span, progress.billed())
                await call.fail(request_id, exc)
            finally:
                if admission is not None:  # the TPM buckets get what the estimate overstated
                    admission.settle(progress.billed())
            accounting.completed(spec, completion, span)
        self.log_done(spec, completion)
        return completion

    async def stream(self, call: Call) -> AsyncGenerator[StreamItem, None]:
        """The decision, the deltas, then the completion, booked before it is yielded. Close it
        (``contextlib.aclosing``) when the caller leaves, so what was streamed is billed."""
        spec, request_id, started, deadline = call.spec, call.request_id, call.started, call.deadline
        accounting = self._service.accounting
        progress = CallProgress()
        with accounting.request_span(call.name, call.metadata) as span:
            booked = False  # one spend record per request, even if the caller leaves after the last one
            admission: Admission | None = None
            try:
                prompt, admission = await self._admit(call)
                stream = self._service.pipeline.stream(
                    spec, request_id, started=started, deadline=deadline, progress=progress, prompt=prompt
                )
                async with contextlib.aclosing(stream):
                    async for item in stream:
                        if isinstance(item, Completion):
                            accounting.completed(spec, item, span)
                            booked = True
                            self.log_done(spec, item)
                        yield item
            except (asyncio.CancelledError, GeneratorExit):
                # The caller left mid-stream: what the tier streamed until then is billed, or what
                # the budget was charged if the answer was complete (progress says which).
                if not booked:
                    accounting.failed(spec, request_id, cancelled(), started, span, progress.billed())
                raise
            except Exception as exc:
                accounting.failed(spec, request_id, exc, started, span, progress.billed())
                await call.fail(request_id, exc)
            finally:
                if admission is not None:
                    admission.settle(progress.billed())

    def log_done(self, spec: RequestSpec, completion: Completion) -> None:
        log.info(
            "completed",
            extra={
                "request_id": completion.decision.request_id,
                "tenant": spec.tenant,
                "feature": spec.feature,
                "tier": completion.decision.tier,
                "reason": completion.decision.reason,
                "input_tokens": completion.usage.input_tokens,
                "output_tokens": completion.usage.output_tokens,
                "cost_usd": str(completion.cost_usd),
                "total_ms": round(completion.latency.total_ms, 3),
                "overhead_ms": round(completion.latency.overhead_ms, 3),
                **prompt_field(spec.last_user_text, self._service.config.server.log_prompts),
            },
        )


def log_failure(request_id: str, exc: BaseException) -> None:
    """A failed request's log line: the whole story of a ``ServiceError``, the traceback of anything else."""
    if isinstance(exc, ServiceError):
        log.warning(
            "request failed", extra={"request_id": request_id, "code": exc.code.name, "error": exc.message}
        )
    else:
        log.error("internal error", exc_info=exc, extra={"request_id": request_id})


def cancelled() -> RequestCancelled:
    return RequestCancelled("the caller cancelled the call")
