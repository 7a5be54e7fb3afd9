"""No request field is silently lost: each field of CompleteRequest (and of ChatMessage), read from
the proto descriptor, either reaches the upstream body of both wire protocols or is refused with
a status naming it; fields that only steer tierwise are listed as its own."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.harness import AUTH, Running, build_config, config_dict, rpc_error, running_server
from tests.upstream import ScriptedUpstream
from tierwise.v1 import tierwise_pb2 as pb

# Fields that steer tierwise itself (routing, budgets, attribution, the cache) and mean nothing to a
# model. ``user`` is the end user's id for experiment bucketing: it stays out of upstream requests.
TIERWISE_OWN = {
    "feature",
    "user",
    "tier",
    "quality_target",
    "latency_budget_ms",
    "metadata",
    "cache_mode",
    "max_age_s",
}

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}
Body = dict[str, Any]


def tool_turns(body: Body) -> str:
    return json.dumps(body["messages"])


# field -> (the request fields that set it, per protocol: a check on the body, or "refused").
Check = Callable[[Body], bool] | str
CASES: dict[str, tuple[dict[str, Any], dict[str, Check]]] = {
    "messages": (
        {},
        {
            "openai": lambda b: b["messages"][-1] == {"role": "user", "content": "What is 2+2?"},
            "anthropic": lambda b: b["messages"][-1] == {"role": "user", "content": "What is 2+2?"},
        },
    ),
    "max_tokens": (
        {"max_tokens": 77},
        {"openai": lambda b: b["max_tokens"] == 77, "anthropic": lambda b: b["max_tokens"] == 77},
    ),
    "temperature": (
        {"temperature": 0.25},
        {"openai": lambda b: b["temperature"] == 0.25, "anthropic": lambda b: b["temperature"] == 0.25},
    ),
    "stop": (
        {"stop": ["END"]},
        {"openai": lambda b: b["stop"] == ["END"], "anthropic": lambda b: b["stop_sequences"] == ["END"]},
    ),
    "tools_json": (
        {"tools_json": json.dumps(TOOLS)},
        {"openai": lambda b: b["tools"] == TOOLS, "anthropic": lambda b: b["tools"][0]["name"] == "lookup"},
    ),
    "tool_choice": (
        {"tools_json": json.dumps(TOOLS), "tool_choice": "required"},
        {
            "openai": lambda b: b["tool_choice"] == "required",
            "anthropic": lambda b: b["tool_choice"] == {"type": "any"},
        },
    ),
    "parallel_tool_calls": (
        {"tools_json": json.dumps(TOOLS), "parallel_tool_calls": False},
        {
            "openai": lambda b: b["parallel_tool_calls"] is False,
            "anthropic": lambda b: b["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True},
        },
    ),
    "response_format_json": (
        {"response_format_json": json.dumps(SCHEMA)},
        {"openai": lambda b: b["response_format"] == SCHEMA, "anthropic": "refused"},
    ),
    "top_p": (
        {"top_p": 0.9},
        {"openai": lambda b: b["top_p"] == 0.9, "anthropic": lambda b: b["top_p"] == 0.9},
    ),
    "seed": ({"seed": 42}, {"openai": lambda b: b["seed"] == 42, "anthropic": "refused"}),
}

# ChatMessage's fields, each set in a conversation with an image and a tool turn.
MESSAGE_CASES: dict[str, dict[str, Check]] = {
    "role": {
        "openai": lambda b: b["messages"][-1]["role"] == "tool",
        "anthropic": lambda b: b["messages"][-1]["role"] == "user",
    },
    "content": {
        "openai": lambda b: "Found it." in tool_turns(b),
        "anthropic": lambda b: "Found it." in tool_turns(b),
    },
    "tool_calls": {
        "openai": lambda b: '"id": "c1"' in tool_turns(b),
        "anthropic": lambda b: '"tool_use"' in tool_turns(b),
    },
    "tool_call_id": {
        "openai": lambda b: b["messages"][-1]["tool_call_id"] == "c1",
        "anthropic": lambda b: b["messages"][-1]["content"][0]["tool_use_id"] == "c1",
    },
    "images": {
        "openai": lambda b: b["messages"][0]["content"][1]["image_url"]["url"] == IMAGE_URL,
        "anthropic": lambda b: b["messages"][0]["content"][1]["source"]["url"] == IMAGE_URL,
    },
}
IMAGE_URL = "https://images.example.com/order-7.png"
TIER_OF = {"openai": "small", "anthropic": "large"}
# ImagePart's fields, each set on a user turn's one image (detail low: the Messages API has none).
IMAGE_PART_CASES: dict[str, dict[str, Check]] = {
    "url": MESSAGE_CASES["images"],
    "detail": {
        "openai": lambda b: b["messages"][0]["content"][1]["image_url"]["detail"] == "low",
        "anthropic": "refused",
    },
}


@pytest_asyncio.fixture
async def svc(upstream: ScriptedUpstream, tmp_path: Path) -> AsyncIterator[Running]:
    config = build_config(config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url))
    async with running_server(config) as running:
        yield running


def test_every_request_field_is_either_sent_or_tierwise_own() -> None:
    fields = {f.name for f in pb.CompleteRequest.DESCRIPTOR.fields}
    assert fields == TIERWISE_OWN | set(CASES), "a new CompleteRequest field needs a case here"
    assert fields == {f.name for f in pb.RouteRequest.DESCRIPTOR.fields}
    assert {f.name for f in pb.ChatMessage.DESCRIPTOR.fields} == set(MESSAGE_CASES)
    assert {f.name for f in pb.ImagePart.DESCRIPTOR.fields} == set(IMAGE_PART_CASES)


async def sent_or_refused(
    svc: Running, upstream: ScriptedUpstream, kind: str, request: pb.CompleteRequest, check: Check, field: str
) -> None:
    request.tier = TIER_OF[kind]
    before = len(upstream.requests)
    if check == "refused":
        error = await rpc_error(svc.stub.Complete(request, metadata=AUTH))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == f"{field}: tier {TIER_OF[kind]!r} ({kind}) cannot honour it"
        assert len(upstream.requests) == before  # nothing went upstream
        return
    await svc.stub.Complete(request, metadata=AUTH)
    body = upstream.requests[-1].body
    assert not isinstance(check, str) and check(body), f"{field} did not reach the {kind} body: {body}"


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", list(TIER_OF))
@pytest.mark.parametrize("field", list(CASES))
async def test_each_field_reaches_the_upstream_or_is_refused_by_name(
    svc: Running, upstream: ScriptedUpstream, field: str, kind: str
) -> None:
    fields, checks = CASES[field]
    request = pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content="What is 2+2?")], **fields)
    await sent_or_refused(svc, upstream, kind, request, checks[kind], field)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", list(TIER_OF))
@pytest.mark.parametrize("field", list(MESSAGE_CASES))
async def test_each_message_field_reaches_the_upstream(
    svc: Running, upstream: ScriptedUpstream, field: str, kind: str
) -> None:
    messages = [
        pb.ChatMessage(role="user", content="Find order 7.", images=[pb.ImagePart(url=IMAGE_URL)]),
        pb.ChatMessage(
            role="assistant", tool_calls=[pb.ToolCall(id="c1", name="lookup", arguments_json="{}")]
        ),
        pb.ChatMessage(role="tool", tool_call_id="c1", content="Found it."),
    ]
    request = pb.CompleteRequest(messages=messages, tools_json=json.dumps(TOOLS))
    await sent_or_refused(svc, upstream, kind, request, MESSAGE_CASES[field][kind], field)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", list(TIER_OF))
@pytest.mark.parametrize("field", list(IMAGE_PART_CASES))
async def test_each_image_field_reaches_the_upstream_or_is_refused_by_name(
    svc: Running, upstream: ScriptedUpstream, field: str, kind: str
) -> None:
    image = pb.ImagePart(url=IMAGE_URL, detail="low" if field == "detail" else "")
    request = pb.CompleteRequest(
        messages=[pb.ChatMessage(role="user", content="Find order 7.", images=[image])]
    )
    name = f"messages[0].images[0].{field}"
    await sent_or_refused(svc, upstream, kind, request, IMAGE_PART_CASES[field][kind], name)


@pytest.mark.asyncio
async def test_a_routed_request_goes_only_to_tiers_that_can_honour_it(
    svc: Running, upstream: ScriptedUpstream
) -> None:
    question = [pb.ChatMessage(role="user", content="What is 2+2?")]
    # Only the anthropic tier admits 1000 output tokens, and it has no seed.
    error = await rpc_error(
        svc.stub.Complete(pb.CompleteRequest(messages=question, seed=1, max_tokens=1000), metadata=AUTH)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        error.details()
        == "seed: no tier that could answer honours it: tier 'large' (anthropic) cannot honour it"
    )
    # Routed with a strong quality target, the seed keeps the request on the tier that has one.
    request = pb.CompleteRequest(
        messages=question, seed=1, quality_target=1.0, response_format_json=json.dumps(SCHEMA)
    )
    response = await svc.stub.Complete(request, metadata=AUTH)
    assert response.decision.tier == "small"
    assert upstream.requests[-1].body["seed"] == 1


BAD: list[tuple[dict[str, Any], str]] = [
    ({"tool_choice": "auto"}, "tool_choice: needs tools_json"),
    ({"tools_json": json.dumps(TOOLS), "tool_choice": "always"}, "tool_choice: must be auto, none, required"),
    (
        {
            "tools_json": json.dumps(TOOLS),
            "tool_choice": json.dumps({"type": "function", "function": {"name": "x"}}),
        },
        "tool_choice: names 'x'",
    ),
    ({"parallel_tool_calls": True}, "parallel_tool_calls: needs tools_json"),
    ({"tools_json": '{"name": "lookup"}'}, "tools_json: must be a JSON array"),
    ({"tools_json": '[{"description": "no name"}]'}, 'tools_json[0]: must be an object with a "name"'),
    ({"response_format_json": '{"type": "xml"}'}, 'response_format_json: "type" must be one of'),
    ({"response_format_json": '{"type": "json_schema"}'}, 'response_format_json: "json_schema" must be'),
    ({"response_format_json": "[1]"}, "response_format_json: must be a JSON object"),
    ({"top_p": 1.5}, "top_p: must be in [0, 1]"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("fields", "message"), BAD, ids=[b[1][:40] for b in BAD])
async def test_a_bad_new_field_is_invalid_argument_naming_it(
    svc: Running, fields: dict[str, Any], message: str
) -> None:
    request = pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content="hi")], **fields)
    error = await rpc_error(svc.stub.Complete(request, metadata=AUTH))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(message), error.details()


BAD_TURNS: list[tuple[list[pb.ChatMessage], str]] = [
    (
        [pb.ChatMessage(role="tool", content="x")],
        "messages[0].tool_call_id: a tool message must name the call",
    ),
    (
        [
            pb.ChatMessage(role="user", content="a"),
            pb.ChatMessage(role="tool", tool_call_id="nope", content="x"),
        ],
        "messages[1].tool_call_id: 'nope' is no tool call",
    ),
    (
        [pb.ChatMessage(role="user", content="a", tool_call_id="c1")],
        "messages[0].tool_call_id: only tool messages",
    ),
    (
        [
            pb.ChatMessage(
                role="user", content="a", tool_calls=[pb.ToolCall(id="c", name="f", arguments_json="{}")]
            )
        ],
        "messages[0].tool_calls: only assistant",
    ),
    (
        [
            pb.ChatMessage(role="user", content="a"),
            pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(id="c", name="f", arguments_json="[")]),
            pb.ChatMessage(role="user", content="b"),
        ],
        "messages[1].tool_calls[0].arguments_json: is not JSON",
    ),
    (
        [
            pb.ChatMessage(role="user", content="a"),
            pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(name="f", arguments_json="{}")]),
            pb.ChatMessage(role="user", content="b"),
        ],
        "messages[1].tool_calls[0].id: must not be empty",
    ),
    (
        [
            pb.ChatMessage(role="user", content="a"),
            pb.ChatMessage(
                role="assistant",
                tool_calls=[pb.ToolCall(id="c", name="f", arguments_json='{"a": "' + "x" * 200_000 + '"}')],
            ),
            pb.ChatMessage(role="user", content="b"),
        ],
        "messages[1].tool_calls[0].arguments_json: is 200009 characters; the limit is 200000",
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("messages", "message"), BAD_TURNS, ids=[b[1][:40] for b in BAD_TURNS])
async def test_a_bad_tool_turn_is_invalid_argument_naming_it(
    svc: Running, messages: list[pb.ChatMessage], message: str
) -> None:
    error = await rpc_error(svc.stub.Complete(pb.CompleteRequest(messages=messages), metadata=AUTH))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(message), error.details()
