"""Conversions between the pipeline's values and the tierwise.v1 messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

from tierwise.router.outcome import Attempt, Completion, Decision, Latency, StreamDelta
from tierwise.router.pricing import usd_str, usd_to_float
from tierwise.router.types import TokenUsage, ToolCall
from tierwise.v1 import tierwise_pb2 as pb


def usage_pb(usage: TokenUsage) -> pb.Usage:
    return pb.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
    )


def decision_pb(decision: Decision) -> pb.RouteDecision:
    message = pb.RouteDecision(
        request_id=decision.request_id,
        tier=decision.tier,
        model=decision.model,
        provider=decision.provider,
        reason=decision.reason,
        policy=decision.policy,
        p_adequate=dict(decision.p_adequate),
        estimated_input_tokens=decision.estimated_input_tokens,
        estimated_cost_usd=usd_to_float(decision.estimated_cost_usd),
        cache_hit=decision.cache_hit is not None,
        experiment=decision.experiment,
        arm=decision.arm,
        saved_cost_usd=usd_to_float(decision.saved_cost_usd),
        model_version=decision.model_version,
    )
    hit = decision.cache_hit
    if hit is not None:
        message.cached.CopyFrom(
            pb.CachedAnswer(
                entry_id=hit.entry_id,
                content=hit.content,
                finish_reason=hit.finish_reason,
                kind=hit.kind,
                similarity=hit.similarity,
                model=hit.model,
                usage=usage_pb(hit.usage),
                age_s=hit.age_s,
            )
        )
    return message


def latency_pb(latency: Latency) -> pb.Latency:
    return pb.Latency(
        total_ms=latency.total_ms,
        upstream_ms=latency.upstream_ms,
        overhead_ms=latency.overhead_ms,
        ttft_ms=latency.ttft_ms,
        tpot_ms=latency.tpot_ms,
    )


def attempts_pb(attempts: Sequence[Attempt]) -> list[pb.Attempt]:
    return [
        pb.Attempt(
            tier=a.tier,
            model=a.model,
            ok=a.ok,
            error_type=a.error_type,
            error=a.error,
            http_status=a.http_status,
            latency_ms=a.latency_ms,
        )
        for a in attempts
    ]


def tool_calls_pb(calls: Sequence[ToolCall]) -> list[pb.ToolCall]:
    return [pb.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments) for c in calls]


def delta_chunk(request_id: str, delta: StreamDelta) -> pb.CompleteChunk:
    """A stream's piece of text, or of a tool call."""
    call = delta.tool_call
    if call is None:
        return pb.CompleteChunk(request_id=request_id, delta=delta.text)
    piece = pb.ToolCallDelta(index=call.index, id=call.id, name=call.name, arguments_json=call.arguments)
    return pb.CompleteChunk(request_id=request_id, tool_call=piece)


class _Settlement(TypedDict):
    """What a unary response and a stream's last message both say: how the answer ended (with the
    tool calls it made), what it cost and how long it took."""

    finish_reason: str
    tool_calls: list[pb.ToolCall]
    usage: pb.Usage
    cost_usd: float
    cost_usd_exact: str
    latency: pb.Latency
    attempts: list[pb.Attempt]


def _settlement(completion: Completion) -> _Settlement:
    return _Settlement(
        finish_reason=completion.finish_reason,
        tool_calls=tool_calls_pb(completion.tool_calls),
        usage=usage_pb(completion.usage),
        cost_usd=usd_to_float(completion.cost_usd),
        cost_usd_exact=usd_str(completion.cost_usd),
        latency=latency_pb(completion.latency),
        attempts=attempts_pb(completion.attempts),
    )


def response_pb(completion: Completion) -> pb.CompleteResponse:
    return pb.CompleteResponse(
        request_id=completion.decision.request_id,
        decision=decision_pb(completion.decision),
        content=completion.content,
        **_settlement(completion),
    )


def stream_end_pb(completion: Completion) -> pb.StreamEnd:
    return pb.StreamEnd(**_settlement(completion))
