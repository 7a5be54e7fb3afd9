"""A stream that ends without its final chunk still costs what the tier streamed: the tier broke
mid-stream, or the caller left. The spend record, the metrics and the budget all carry that cost
(settled, not released). A call the caller abandons before any text (unary, or a stream before its
first token) costs its prompt: the upstream was given it. A tier that failed is not billed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import pytest_asyncio

from tests.harness import AUTH, Running, build_config, config_dict, running_server
from tests.upstream import ScriptedUpstream
from tierwise.router.ledger.record import SpendRecord
from tierwise.router.ledger.spend_ledger import SpendLedger
from tierwise.router.ledger.sql import SpendTotals
from tierwise.router.pricing import cost_usd
from tierwise.router.tokens import TokenCounter
from tierwise.router.types import ChatMessage, TokenUsage
from tierwise.v1 import tierwise_pb2 as pb

T = TypeVar("T")

PROMPT = [pb.ChatMessage(role="user", content="Tell me a story.")]


@pytest_asyncio.fixture
async def svc(upstream: ScriptedUpstream, tmp_path: Path) -> AsyncIterator[Running]:
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    data["budgets"] = [{"tenant": "acme", "window": "day", "usd": "10"}]
    async with running_server(build_config(data)) as running:
        yield running


async def eventually(fetch: Callable[[], Awaitable[T | None]], what: str) -> T:
    """``fetch()``'s first non-empty answer within 10 s: spend records land asynchronously."""
    for _ in range(200):
        found = await fetch()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {what}")


def ledger_of(svc: Running) -> SpendLedger:
    ledger = svc.server.service.accounting.ledger
    assert ledger is not None
    return ledger


async def record_of(svc: Running, request_id: str) -> SpendRecord:
    return await eventually(
        lambda: ledger_of(svc).lookup(request_id, "acme"), f"spend record for {request_id}"
    )


async def budget_used(svc: Running) -> tuple[Decimal, Decimal]:
    [usage] = await svc.server.service.budgets.usage()
    return usage.used_usd, usage.in_flight_usd


def small_cost(svc: Running, text: str) -> tuple[int, Decimal]:
    """What the small tier bills for the prompt plus ``text``, by tiktoken's count."""
    tier = svc.config.tier("small")
    counter = TokenCounter()
    encoding = counter.encoding_for_model(tier.model)
    messages = [ChatMessage(role=m.role, content=m.content) for m in PROMPT]
    usage = TokenUsage(
        counter.count_messages(messages, tier.model, encoding=encoding),
        counter.count_text(text, encoding=encoding),
    )
    return usage.output_tokens, cost_usd(tier.price, usage)


@pytest.mark.asyncio
async def test_a_stream_broken_mid_way_bills_the_text_it_sent(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script("small-model", text="a b c d e f", drop_after=2)
    received: list[pb.CompleteChunk] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in svc.stub.CompleteStream(pb.CompleteRequest(messages=PROMPT), metadata=AUTH):
            received.append(chunk)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    sent = "".join(c.delta for c in received)
    assert sent == "a b "
    record = await record_of(svc, received[0].request_id)
    output_tokens, cost = small_cost(svc, sent)
    assert (record.status, record.tier, record.output_tokens) == ("UNAVAILABLE", "small", output_tokens)
    assert record.cost_usd == cost > 0
    assert await budget_used(svc) == (cost, Decimal(0))  # settled at that cost, nothing left in flight


@pytest.mark.asyncio
async def test_a_stream_the_caller_leaves_bills_what_was_streamed(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script("small-model", text=" ".join(["word"] * 200), chunk_delay_s=0.02)
    call = svc.stub.CompleteStream(pb.CompleteRequest(messages=PROMPT), metadata=AUTH)
    first = await call.read()
    await call.read()  # the first text has arrived
    call.cancel()
    record = await record_of(svc, first.request_id)
    assert record.status == "CANCELLED" and record.tier == "small"
    assert 1 <= record.output_tokens < 200 and record.cost_usd > 0
    assert await budget_used(svc) == (record.cost_usd, Decimal(0))


async def small_model_called(upstream: ScriptedUpstream) -> None:
    """Wait until the upstream has received a call for the small tier's model."""
    while not upstream.requests_for("small-model"):
        await asyncio.sleep(0.01)


async def status_totals(svc: Running) -> list[tuple[str, int, Decimal]]:
    ledger, now = ledger_of(svc), time.time()

    async def flushed_totals() -> list[SpendTotals]:
        assert await ledger.flush(10)
        return await ledger.totals(now - 60, now + 60, ["status"])

    rows = await eventually(flushed_totals, "spend record")
    return [(r.group["status"], r.requests, r.cost_usd) for r in rows]


@pytest.mark.asyncio
async def test_an_abandoned_unary_call_is_recorded_as_cancelled_and_bills_its_prompt(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script("small-model", latency_s=5.0)
    call = svc.stub.Complete(pb.CompleteRequest(messages=PROMPT), metadata=AUTH)
    await small_model_called(upstream)  # the upstream call is under way
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    _, prompt_cost = small_cost(svc, "")
    assert await status_totals(svc) == [("CANCELLED", 1, prompt_cost)]
    assert prompt_cost > 0
    assert await budget_used(svc) == (prompt_cost, Decimal(0))  # settled at the prompt's cost


@pytest.mark.asyncio
async def test_a_stream_the_caller_leaves_before_its_first_token_bills_its_prompt(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script("small-model", latency_s=5.0)
    call = svc.stub.CompleteStream(pb.CompleteRequest(messages=PROMPT), metadata=AUTH)
    first = await call.read()  # the decision
    await small_model_called(upstream)
    call.cancel()
    record = await record_of(svc, first.request_id)
    _, prompt_cost = small_cost(svc, "")
    assert (record.status, record.tier, record.output_tokens, record.cost_usd) == (
        "CANCELLED",
        "small",
        0,
        prompt_cost,
    )
    assert await budget_used(svc) == (prompt_cost, Decimal(0))


@pytest.mark.asyncio
async def test_a_tier_that_fails_before_answering_is_not_billed(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script("small-model", status=400)
    with pytest.raises(grpc.aio.AioRpcError):
        await svc.stub.Complete(pb.CompleteRequest(messages=PROMPT), metadata=AUTH)
    assert [row[2] for row in await status_totals(svc)] == [Decimal(0)]
    assert await budget_used(svc) == (Decimal(0), Decimal(0))


@pytest.mark.asyncio
async def test_a_unary_call_abandoned_during_a_retry_back_off_bills_nothing(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script("small-model", status=429, retry_after="3")
    call = svc.stub.Complete(pb.CompleteRequest(messages=PROMPT), metadata=AUTH)
    await small_model_called(upstream)  # the first try was sent and refused
    await asyncio.sleep(0.3)  # now waiting out Retry-After before the second try
    assert len(upstream.requests_for("small-model")) == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await status_totals(svc) == [("CANCELLED", 1, Decimal(0))]
    assert await budget_used(svc) == (Decimal(0), Decimal(0))
