"""Tool use through the real server and a scripted upstream: the tools, the tool choice and the
tool turns of a conversation reach each tier in its own protocol (OpenAI-compatible as sent,
Anthropic translated), and the tier's tool calls come back to the caller, unary and streamed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.harness import AUTH, Running, build_config, config_dict, running_server
from tests.upstream import ScriptedUpstream
from tierwise.router.tokens import TokenCounter
from tierwise.v1 import tierwise_pb2 as pb

PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather in a city", "parameters": PARAMETERS},
    }
]
TOOLS_JSON = json.dumps(TOOLS)
CHOICE = {"type": "function", "function": {"name": "get_weather"}}
CALL = ("call_1", "get_weather", '{"city": "Paris"}')
TIERS = {"small": "openai", "large": "anthropic"}


@pytest_asyncio.fixture
async def svc(upstream: ScriptedUpstream, tmp_path: Path) -> AsyncIterator[Running]:
    config = build_config(config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url))
    async with running_server(config) as running:
        yield running


def asking(tier: str, **fields: Any) -> pb.CompleteRequest:
    return pb.CompleteRequest(
        messages=[pb.ChatMessage(role="user", content="Weather in Paris?")],
        tier=tier,
        tools_json=TOOLS_JSON,
        tool_choice=json.dumps(CHOICE),
        parallel_tool_calls=False,
        **fields,
    )


async def answer(svc: Running, request: pb.CompleteRequest, streamed: bool) -> tuple[str, list[Any], str]:
    """finish_reason, the tool calls as (id, name, parsed arguments), and the text."""
    if not streamed:
        response = await svc.stub.Complete(request, metadata=AUTH)
        calls = [(c.id, c.name, json.loads(c.arguments_json)) for c in response.tool_calls]
        return response.finish_reason, calls, response.content
    chunks = [c async for c in svc.stub.CompleteStream(request, metadata=AUTH)]
    pieces: dict[int, list[str]] = {}
    for chunk in chunks:
        if chunk.WhichOneof("body") == "tool_call":
            piece = pieces.setdefault(chunk.tool_call.index, ["", "", ""])
            piece[0] += chunk.tool_call.id
            piece[1] += chunk.tool_call.name
            piece[2] += chunk.tool_call.arguments_json
    end = chunks[-1].end
    calls = [(c.id, c.name, json.loads(c.arguments_json)) for c in end.tool_calls]
    # The streamed pieces put together are the calls the last chunk reports.
    assert [(i, n, json.loads(a)) for i, n, a in pieces.values()] == calls
    return end.finish_reason, calls, "".join(c.delta for c in chunks)


@pytest.mark.asyncio
@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("tier", list(TIERS))
async def test_a_tool_call_comes_back_from_either_protocol(
    svc: Running, upstream: ScriptedUpstream, tier: str, streamed: bool
) -> None:
    upstream.script(text="Let me look.", tool_calls=(CALL,))
    finish, calls, text = await answer(svc, asking(tier, top_p=0.5), streamed)
    assert finish == "tool_calls"
    assert calls == [("call_1", "get_weather", {"city": "Paris"})]
    assert text == "Let me look."
    body = upstream.requests[-1].body
    assert body["top_p"] == 0.5
    if TIERS[tier] == "openai":
        assert body["tools"] == TOOLS
        assert body["tool_choice"] == CHOICE
        assert body["parallel_tool_calls"] is False
    else:
        assert body["tools"] == [
            {"name": "get_weather", "description": "Weather in a city", "input_schema": PARAMETERS}
        ]
        assert body["tool_choice"] == {
            "type": "tool",
            "name": "get_weather",
            "disable_parallel_tool_use": True,
        }


def conversation() -> list[pb.ChatMessage]:
    return [
        pb.ChatMessage(role="system", content="Be brief."),
        pb.ChatMessage(role="user", content="Weather in Paris and Rome?"),
        pb.ChatMessage(
            role="assistant",
            tool_calls=[
                pb.ToolCall(id="call_1", name="get_weather", arguments_json='{"city": "Paris"}'),
                pb.ToolCall(id="call_2", name="get_weather", arguments_json='{"city": "Rome"}'),
            ],
        ),
        pb.ChatMessage(role="tool", tool_call_id="call_1", content="Sunny, 24C"),
        pb.ChatMessage(role="tool", tool_call_id="call_2", content="Rain, 18C"),
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("tier", list(TIERS))
async def test_tool_results_reach_either_protocol_and_the_model_answers(
    svc: Running, upstream: ScriptedUpstream, tier: str, streamed: bool
) -> None:
    upstream.script(text="Paris is sunny, Rome rainy.")
    request = pb.CompleteRequest(messages=conversation(), tier=tier, tools_json=TOOLS_JSON)
    finish, calls, text = await answer(svc, request, streamed)
    assert (finish, calls, text) == ("stop", [], "Paris is sunny, Rome rainy.")
    sent = upstream.requests[-1].body["messages"]
    if TIERS[tier] == "openai":
        assert sent[2] == {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                },
            ],
        }
        assert sent[3:] == [
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "Rain, 18C"},
        ]
    else:
        assert sent[1] == {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
            ],
        }
        # Both results in one user turn, as the Messages API asks.
        assert sent[2:] == [
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "Sunny, 24C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "Rain, 18C"},
                ],
            }
        ]


@pytest.mark.asyncio
async def test_tool_definitions_and_calls_are_counted_when_the_upstream_reports_no_usage(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    upstream.script(text="", tool_calls=(CALL,), report_usage=False)
    with_tools = await svc.stub.Complete(asking("small"), metadata=AUTH)
    plain = await svc.stub.Complete(
        pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content="Weather in Paris?")], tier="small"),
        metadata=AUTH,
    )
    counter = TokenCounter()
    extra = counter.count_text(TOOLS_JSON + json.dumps(CHOICE), model="small-model")
    assert with_tools.usage.input_tokens == plain.usage.input_tokens + extra
    # The answer has no text: its tokens are the call's name and arguments.
    assert (
        with_tools.usage.output_tokens == counter.count_text("get_weather" + CALL[2], model="small-model") > 0
    )
    assert with_tools.cost_usd > 0
