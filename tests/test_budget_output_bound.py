"""Hard budgets are hard: every upstream call is sent an output bound, the budget reserves that
bound at the chain's worst tier, and so (issue 21) an upstream that would answer 4,000 tokens
cannot spend a $0.05/day budget 14 times over.

The overspend bound under test (``tierwise.router.output_bound``):

    spent <= limit + sum over answers of  input price x max(0, reported input - estimated input)
                                        + output price x max(0, reported output - max_tokens sent)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.harness import AUTH, Running, build_config, config_dict, running_server
from tests.upstream import ScriptedUpstream
from tierwise.v1 import tierwise_pb2 as pb

LIMIT = Decimal("0.05")
PRICE = {"input_per_mtok": "1", "output_per_mtok": "30"}  # 4,000 output tokens cost $0.12
IN_PRICE, OUT_PRICE = Decimal(1) / 10**6, Decimal(30) / 10**6
BOUNDS = {"small-model": 256, "large-model": 512}  # the tiers' max_output_tokens
UNBOUNDED_OUTPUT = 4000
BURST = 8


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as scripted:
        yield scripted


def budget_config(store: Path, upstream: ScriptedUpstream) -> dict[str, Any]:
    data = config_dict(store, upstream.openai_url, upstream.base_url)
    for tier in data["tiers"]:
        tier["price"] = PRICE
        tier["max_output_tokens"] = BOUNDS[tier["model"]]
    data["budgets"] = [{"tenant": "acme", "window": "day", "usd": str(LIMIT)}]
    return data


def request(**fields: Any) -> pb.CompleteRequest:
    return pb.CompleteRequest(
        messages=[pb.ChatMessage(role="user", content="Write the whole quarterly report.")], **fields
    )


async def complete(svc: Running, **fields: Any) -> pb.CompleteResponse | grpc.aio.AioRpcError:
    try:
        response: pb.CompleteResponse = await svc.stub.Complete(request(**fields), metadata=AUTH, timeout=30)
    except grpc.aio.AioRpcError as exc:
        return exc
    return response


async def spent(svc: Running) -> Decimal:
    [usage] = await svc.server.service.budgets.usage()
    assert usage.in_flight_usd == 0  # every admitted request settled
    return usage.used_usd


def overspend_bound(answered: list[pb.CompleteResponse], sent_bounds: list[int]) -> Decimal:
    """The documented bound on spend beyond the limit, from what each answer reported."""
    total = Decimal(0)
    for answer, bound in zip(answered, sent_bounds, strict=True):
        extra_input = max(0, answer.usage.input_tokens - answer.decision.estimated_input_tokens)
        total += IN_PRICE * extra_input + OUT_PRICE * max(0, answer.usage.output_tokens - bound)
    return total


async def spend_until_refused(
    svc: Running, upstream: ScriptedUpstream, **script: Any
) -> tuple[list[pb.CompleteResponse], list[grpc.aio.AioRpcError]]:
    """A burst that reserves before anything settles (the upstream holds each answer a second), then
    one call at a time until the limit refuses. Every answer is scripted by ``script``."""
    upstream.script(**script, latency_s=1.0)
    results = list(await asyncio.gather(*(complete(svc) for _ in range(BURST))))
    upstream.script(**script)
    while not isinstance(results[-1], grpc.aio.AioRpcError) and len(results) < BURST + 50:
        results.append(await complete(svc))
    answered = [r for r in results if isinstance(r, pb.CompleteResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert answered and refused
    return answered, refused


@pytest.mark.asyncio
async def test_an_upstream_keeping_to_max_tokens_cannot_overspend_a_hard_budget(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    async with running_server(build_config(budget_config(tmp_path, upstream))) as svc:
        # It would answer 4,000 tokens unless the request bounds it.
        answered, _ = await spend_until_refused(
            svc, upstream, text="ok", output_tokens=UNBOUNDED_OUTPUT, honour_max_tokens=True
        )
        assert {a.decision.tier for a in answered} == {"small"}  # routed cheapest, reserved at large
        total = sum(Decimal(a.cost_usd_exact) for a in answered)
        assert await spent(svc) == total
        bound = overspend_bound(answered, [BOUNDS["small-model"]] * len(answered))
        assert bound == 0  # the upstream kept to the bound and reported fewer input tokens than estimated
        assert total <= LIMIT + bound, f"spent {total} under a {LIMIT} limit in {len(answered)} answers"
        bodies = [r.body for r in upstream.requests]
        assert all(body.get("max_tokens") == BOUNDS[body["model"]] for body in bodies), bodies
        # Routing's estimate keeps the expected output length; the reservation did not.
        assert all(Decimal(str(a.decision.estimated_cost_usd)) < Decimal("0.0078") for a in answered)


@pytest.mark.asyncio
async def test_every_upstream_call_carries_the_bound_on_both_protocols_unary_and_streamed(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    upstream.script(text="ok", output_tokens=UNBOUNDED_OUTPUT, honour_max_tokens=True)
    unlimited = {**budget_config(tmp_path, upstream), "budgets": []}
    async with running_server(build_config(unlimited)) as svc:
        for tier in ("small", "large"):
            for max_tokens in (None, 100):
                fields = {"tier": tier, "max_tokens": max_tokens}
                unary = await svc.stub.Complete(request(**fields), metadata=AUTH, timeout=30)
                chunks = [
                    c async for c in svc.stub.CompleteStream(request(**fields), metadata=AUTH, timeout=30)
                ]
                streamed_usage = chunks[-1].end.usage
                expected = max_tokens or BOUNDS[f"{tier}-model"]
                assert unary.usage.output_tokens == streamed_usage.output_tokens == expected
                assert unary.finish_reason == chunks[-1].end.finish_reason == "length"
        sent = [(r.model, r.stream, r.body.get("max_tokens")) for r in upstream.requests]
        assert sent == [
            (model, stream, bound)
            for model in ("small-model", "large-model")
            for bound in (BOUNDS[model], 100)
            for stream in (False, True)
        ]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def budget_log() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("tierwise.budgets")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.mark.asyncio
async def test_an_upstream_ignoring_max_tokens_is_charged_what_it_reported_and_logged(
    upstream: ScriptedUpstream, tmp_path: Path, budget_log: _Records
) -> None:
    async with running_server(build_config(budget_config(tmp_path, upstream))) as svc:
        answered, _ = await spend_until_refused(svc, upstream, text="ok", output_tokens=UNBOUNDED_OUTPUT)
        total = sum(Decimal(a.cost_usd_exact) for a in answered)
        assert all(a.usage.output_tokens == UNBOUNDED_OUTPUT for a in answered)
        assert await spent(svc) == total > LIMIT  # the charge is what the upstream reported
        sent = [r.body.get("max_tokens") for r in upstream.requests]
        assert sent == [BOUNDS["small-model"]] * len(answered)
        assert total <= LIMIT + overspend_bound(answered, sent)
        overruns = [r for r in budget_log.records if "over the max_tokens sent" in r.getMessage()]
        assert len(overruns) == len(answered)
        assert {(r.__dict__["tier"], r.__dict__["output_tokens"]) for r in overruns} == {
            ("small", UNBOUNDED_OUTPUT)
        }
