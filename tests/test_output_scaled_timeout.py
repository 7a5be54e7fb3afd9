"""A unary try's learned timeout scales with the request's output bound (``resilience.timeouts``):
after a history of fast short answers, a slow legitimate long answer is answered by its tier, not
cut at a few of the short answers' call times and sent down the fallback chain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.harness import AUTH, build_config, config_dict, running_server
from tests.upstream import ScriptedUpstream
from tierwise.v1 import tierwise_pb2 as pb

HISTORY = 5  # successful calls that give a tier a latency history
SHORT, LONG = 10, 4000  # output tokens of the usual answers and of the long one (max_tokens of each)
SHORT_LATENCY_S = 0.02  # the usual answers' latency: 3 x p99 is well under the 2 s floor
LONG_LATENCY_S = 3.0  # past that floor, well inside 3 x 0.02 s x LONG / SHORT = 24 s (unary history)

MESSAGES = [pb.ChatMessage(role="user", content="Describe Paris.")]


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as scripted:
        yield scripted


@pytest.mark.asyncio
@pytest.mark.parametrize("streamed_history", [False, True])
async def test_a_slow_long_answer_after_fast_short_ones_is_answered_not_cut(
    upstream: ScriptedUpstream, tmp_path: Path, streamed_history: bool
) -> None:
    data = config_dict(tmp_path, upstream.openai_url, upstream.base_url)
    for tier in data["tiers"]:
        del tier["timeout_s"]  # the default, 30 s
        del tier["adaptive_timeout"]  # the default: on
        tier["max_output_tokens"] = LONG
    data["resilience"] = {"latency_window": {"min_samples": HISTORY}}
    # Streamed, a short answer spends 0.02 s to its first token, then 0.01 s between its 4 pieces.
    upstream.script(
        "small-model",
        text="Paris is a city.",
        output_tokens=SHORT,
        latency_s=SHORT_LATENCY_S,
        chunk_delay_s=0.01,
    )
    async with running_server(build_config(data)) as svc:
        for _ in range(HISTORY):
            short = pb.CompleteRequest(messages=MESSAGES, max_tokens=SHORT)
            if streamed_history:  # a stream's samples count for the unary timeout too
                chunks = [c async for c in svc.stub.CompleteStream(short, metadata=AUTH)]
                assert [a.tier for a in chunks[-1].end.attempts] == ["small"]
            else:
                assert (await svc.stub.Complete(short, metadata=AUTH)).decision.tier == "small"
        upstream.script("small-model", text="Paris is ...", output_tokens=LONG, latency_s=LONG_LATENCY_S)
        long = pb.CompleteRequest(messages=MESSAGES, max_tokens=LONG)
        response: pb.CompleteResponse = await svc.stub.Complete(long, metadata=AUTH)
    assert [(a.tier, a.ok) for a in response.attempts] == [("small", True)]
    assert (response.decision.tier, response.content) == ("small", "Paris is ...")
    assert response.usage.output_tokens == LONG
    assert response.attempts[0].latency_ms >= LONG_LATENCY_S * 1000
