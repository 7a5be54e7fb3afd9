"""Deadlines bind the fallback chain (issue 21): a hanging tier leaves the next tier of the chain
time to answer inside the caller's deadline, and once a tier has a latency history it is given up
on after a few of its usual call times, not after its configured ``timeout_s``.

The tiers keep the default ``timeout_s`` of 30 s, as in the issue, where a hanging cheap tier under
a 10 s deadline ended every call DEADLINE_EXCEEDED, and one with no deadline answered after 30 s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.harness import AUTH, Running, build_config, config_dict, running_server
from tests.upstream import ScriptedUpstream
from tierwise.v1 import tierwise_pb2 as pb

HISTORY = 5  # successful calls that give a tier a latency history in these tests
SHORT_BOUND = 16  # max_tokens of a request whose answer is as long as the tier's usual ones


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as scripted:
        scripted.script(text="Paris.")
        yield scripted


def chain_config(store: Path, upstream: ScriptedUpstream) -> dict[str, Any]:
    data = config_dict(store, upstream.openai_url, upstream.base_url)
    for tier in data["tiers"]:
        del tier["timeout_s"]  # the default, 30 s
        del tier["adaptive_timeout"]  # the default: on
    data["resilience"] = {"latency_window": {"min_samples": HISTORY}}
    return data


REQUEST = pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content="Capital of France?")])


def check_answered_by_large(response: pb.CompleteResponse | pb.StreamEnd) -> None:
    assert [(a.tier, a.ok, a.error_type) for a in response.attempts] == [
        ("small", False, "timeout"),
        ("large", True, ""),
    ]


async def complete(
    svc: Running, deadline_s: float | None, request: pb.CompleteRequest = REQUEST
) -> pb.CompleteResponse:
    response: pb.CompleteResponse = await svc.stub.Complete(request, metadata=AUTH, timeout=deadline_s)
    return response


@pytest.mark.asyncio
@pytest.mark.parametrize("deadline_s", [3.0, 10.0])
async def test_a_hanging_tier_leaves_the_next_one_time_within_the_callers_deadline(
    upstream: ScriptedUpstream, tmp_path: Path, deadline_s: float
) -> None:
    upstream.script("small-model", hang=True)
    async with running_server(build_config(chain_config(tmp_path, upstream))) as svc:
        response = await complete(svc, deadline_s)
        check_answered_by_large(response)
        assert (response.decision.tier, response.decision.reason) == ("large", "fallback")
        assert response.content == "Paris."


@pytest.mark.asyncio
async def test_a_hanging_tier_leaves_the_next_one_time_in_a_stream(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    upstream.script("small-model", hang=True)
    async with running_server(build_config(chain_config(tmp_path, upstream))) as svc:
        chunks = [c async for c in svc.stub.CompleteStream(REQUEST, metadata=AUTH, timeout=3.0)]
        check_answered_by_large(chunks[-1].end)
        assert "".join(c.delta for c in chunks[1:-1]) == "Paris."


@pytest.mark.asyncio
async def test_with_a_latency_history_a_hanging_tier_is_left_after_the_floor_not_timeout_s(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    # The small tier's usual answers are as long as the requests' bound, so a try's timeout is 3 x
    # their p99, not scaled up for a longer output (tests/test_output_scaled_timeout.py scales it).
    upstream.script(text="Paris.", output_tokens=SHORT_BOUND)
    short = pb.CompleteRequest(messages=REQUEST.messages, max_tokens=SHORT_BOUND)
    async with running_server(build_config(chain_config(tmp_path, upstream))) as svc:
        for _ in range(HISTORY):
            assert (await complete(svc, None, short)).decision.tier == "small"
        upstream.script("small-model", hang=True)
        # No caller deadline: the server's default of 60 s, and the small tier answered in
        # milliseconds, so its timeout is the 2 s floor (3 x p99 is below it).
        response = await complete(svc, None, short)
        check_answered_by_large(response)
        assert (response.decision.tier, response.decision.reason) == ("large", "fallback")
        assert "no response within 2s" in response.attempts[0].error
