"""The pipeline's answers and failures in the OpenAI Chat Completions shapes: the response body, the
stream's chunks, the error body with its HTTP status, and tierwise's own account of the decision
(a ``tierwise`` object in the body, ``x-tierwise-*`` headers)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc

from tierwise.router.auth import AuthThrottled, KeyStoreDown
from tierwise.router.errors import BudgetExhausted, EmbedderOverloaded, ServiceError, WorkersBusy
from tierwise.router.outcome import Completion, Decision, StreamDelta
from tierwise.router.pricing import usd_str
from tierwise.router.rate_limits import RateLimited
from tierwise.router.types import TokenUsage, ToolCall

Json = dict[str, Any]

# gRPC status -> HTTP status and the OpenAI error type.
_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict_error"),
    grpc.StatusCode.ABORTED: (409, "conflict_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "api_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
}


class HttpFailure(Exception):
    """An answer that is an error: its status, headers and OpenAI-shaped body."""

    def __init__(self, status: int, body: Json, headers: dict[str, str] | None = None) -> None:
        super().__init__(body["error"]["message"])
        self.status = status
        self.body = body
        self.headers = headers or {}


def error(kind: str, message: str, *, param: str | None = None, code: str | None = None) -> Json:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def invalid(field: str, message: str) -> HttpFailure:
    return HttpFailure(400, error("invalid_request_error", message, param=field))


def unauthenticated(exc: Exception) -> HttpFailure:
    if isinstance(exc, AuthThrottled):
        retry = {"retry-after": str(exc.retry_after_s)}
        return HttpFailure(429, error("rate_limit_error", str(exc), code="auth_throttled"), retry)
    if isinstance(exc, KeyStoreDown):  # not the caller's fault: gRPC says UNAVAILABLE, so 503 here
        return HttpFailure(503, error("service_unavailable_error", str(exc), code="key_store_unavailable"))
    message = str(exc).replace("metadata", "header")  # the authenticator speaks gRPC's word for it
    return HttpFailure(401, error("authentication_error", message, code="invalid_api_key"))


def failure(exc: BaseException, request_id: str) -> HttpFailure:
    """A failed request: its status as the gRPC front would say it, in HTTP terms."""
    if not isinstance(exc, ServiceError):
        return HttpFailure(500, error("api_error", f"internal error (request_id={request_id})"))
    status, kind = _HTTP.get(exc.code, (500, "api_error"))
    headers = {"x-tierwise-request-id": request_id}
    code = None
    if isinstance(exc, RateLimited):
        if exc.retry_after_ms is None:  # the request is over the limit itself: it never would be admitted
            headers["x-should-retry"] = "false"
        else:
            headers.update(_retry_headers(exc.retry_after_ms))
        code = "rate_limited"
    elif isinstance(exc, BudgetExhausted):  # a retry is refused too until the budget's window ends
        kind, code = "insufficient_quota", "budget_exhausted"
        headers["x-should-retry"] = "false"
    elif isinstance(exc, EmbedderOverloaded | WorkersBusy):  # a moment's overload: worth retrying shortly
        status, kind, code = 503, "service_unavailable_error", "overloaded"
        headers.update(_retry_headers(exc.retry_after_ms or 1000))
    body = error(kind, f"{exc.public} (request_id={request_id})", code=code)
    if exc.attempts:
        body["tierwise"] = {"request_id": request_id, "attempts": exc.attempts_summary()}
    return HttpFailure(status, body, headers)


def _retry_headers(retry_ms: int) -> dict[str, str]:
    # retry-after is whole seconds (rounded up, so a retry is never early); OpenAI's SDKs read the ms one.
    return {"retry-after": str(-(-retry_ms // 1000)), "retry-after-ms": str(retry_ms)}


def decision_headers(decision: Decision) -> dict[str, str]:
    hit = decision.cache_hit
    return {
        "x-tierwise-request-id": decision.request_id,
        "x-tierwise-tier": decision.tier,
        "x-tierwise-model": decision.model,
        "x-tierwise-reason": decision.reason,
        "x-tierwise-cache": "miss" if hit is None else hit.kind,
        **({"x-tierwise-arm": decision.arm} if decision.arm else {}),
    }


def completion_headers(completion: Completion) -> dict[str, str]:
    return {**decision_headers(completion.decision), "x-tierwise-cost-usd": usd_str(completion.cost_usd)}


def tierwise_object(decision: Decision, completion: Completion | None = None) -> Json:
    hit = decision.cache_hit
    out: Json = {
        "request_id": decision.request_id,
        "tier": decision.tier,
        "model": decision.model,
        "provider": decision.provider,
        "reason": decision.reason,
        "policy": decision.policy,
        "cache_hit": hit is not None,
        "cache_kind": None if hit is None else hit.kind,
        "saved_cost_usd": usd_str(decision.saved_cost_usd),
        "experiment": decision.experiment or None,
        "arm": decision.arm or None,
    }
    if completion is not None:
        out["cost_usd"] = usd_str(completion.cost_usd)
        out["usage_reported"] = completion.usage_reported
        out["latency_ms"] = {
            "total": completion.latency.total_ms,
            "upstream": completion.latency.upstream_ms,
            "overhead": completion.latency.overhead_ms,
            "ttft": completion.latency.ttft_ms,
        }
        out["attempts"] = [
            {"tier": a.tier, "model": a.model, "ok": a.ok, "error_type": a.error_type or None}
            for a in completion.attempts
        ]
    return out


def usage(tokens: TokenUsage) -> Json:
    return {
        "prompt_tokens": tokens.input_tokens,
        "completion_tokens": tokens.output_tokens,
        "total_tokens": tokens.input_tokens + tokens.output_tokens,
        "prompt_tokens_details": {"cached_tokens": tokens.cached_input_tokens},
    }


def _tool_calls(calls: Sequence[ToolCall]) -> list[Json]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def completion_body(completion: Completion, created: int) -> Json:
    message: Json = {"role": "assistant", "content": completion.content or None, "refusal": None}
    if completion.tool_calls:
        message["tool_calls"] = _tool_calls(completion.tool_calls)
    elif message["content"] is None:
        message["content"] = ""  # an empty answer is still text
    return {
        "id": f"chatcmpl-{completion.decision.request_id}",
        "object": "chat.completion",
        "created": created,
        "model": completion.decision.model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": completion.finish_reason, "logprobs": None}
        ],
        "usage": usage(completion.usage),
        "tierwise": tierwise_object(completion.decision, completion),
    }


class ChunkWriter:
    """A stream's chunks, each an SSE event's bytes; all share the id, creation time and model."""

    def __init__(self, decision: Decision, created: int) -> None:
        self._head = {
            "id": f"chatcmpl-{decision.request_id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": decision.model,
        }
        self.decision = decision

    def _event(self, choices: list[Json], **extra: Any) -> bytes:
        return sse({**self._head, "choices": choices, **extra})

    def _choice(self, delta: Json, finish_reason: str | None = None) -> list[Json]:
        return [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]

    def opening(self) -> bytes:
        """The first chunk names the role, and tierwise's decision."""
        delta = {"role": "assistant", "content": ""}
        return self._event(self._choice(delta), tierwise=tierwise_object(self.decision))

    def delta(self, item: StreamDelta) -> bytes:
        call = item.tool_call
        if call is None:
            return self._event(self._choice({"content": item.text}))
        piece: Json = {"index": call.index, "function": {"arguments": call.arguments}}
        if call.id:
            piece.update(id=call.id, type="function")
        if call.name:
            piece["function"]["name"] = call.name
        return self._event(self._choice({"tool_calls": [piece]}))

    def closing(self, completion: Completion, include_usage: bool) -> bytes:
        """The finish reason with tierwise's account; the usage chunk when the caller asked for it."""
        last = self._event(
            self._choice({}, completion.finish_reason),
            tierwise=tierwise_object(completion.decision, completion),
        )
        if include_usage:
            last += self._event([], usage=usage(completion.usage))
        return last + b"data: [DONE]\n\n"


def sse(payload: Json) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
